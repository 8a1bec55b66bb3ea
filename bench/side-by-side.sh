#!/usr/bin/env bash
# Side-by-side overhead (issue 9): in one run on this machine, the Persona agent sampling
# every 1 s and streaming to a local coordinator, against Prometheus node_exporter scraped
# every 1 s by a minimal loop over loopback. Reports CPU (user+sys s) and peak RSS of each
# process over DUR seconds, their ratios, and bytes per sample on the wire (JSON=1: one
# JSON document instead of the text lines).
# Needs: a release build (cargo build --release --workspace), Debian's
# prometheus-node-exporter, curl and python3. Traffic stays on 127.0.0.1.
set -euo pipefail
DUR=${DUR:-300}
BIN=${BIN:-$(pwd)/target/release}
# The coordinator's own cost is not measured here, so any build of it will do.
CBIN=${CBIN:-$BIN}
NE=${NE:-/usr/bin/prometheus-node-exporter}
work=$(mktemp -d)
cleanup() { kill "$APID" "$NPID" "$CPID" 2>/dev/null || true; }
trap cleanup EXIT

"$CBIN/persona-coordinator" serve --data-dir "$work/c" --listen 127.0.0.1:0 --http 127.0.0.1:0 2>"$work/c.log" &
CPID=$!
for _ in $(seq 100); do [ -s "$work/c/serving.json" ] && break; sleep 0.1; done
http=$(python3 -c "import json;print(json.load(open('$work/c/serving.json'))['http'])")
cmd=$("$CBIN/personactl" --api "$http" --data-dir "$work/c" token create --json | python3 -c "import json,sys;print(json.load(sys.stdin)['command'])")
# shellcheck disable=SC2086
"$BIN/"$cmd --state-dir "$work/a" >/dev/null 2>&1
printf 'state_dir = "%s"\n' "$work/a" >"$work/a.toml"
PERSONA_LOG=info "$BIN/persona-agent" run --config "$work/a.toml" 2>"$work/a.log" &
APID=$!
"$NE" --web.listen-address=127.0.0.1:19100 --no-collector.systemd 2>"$work/ne.log" &
NPID=$!
sleep 2

cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
hwm() { awk '/VmHWM/{print $2*1024}' "/proc/$1/status"; }
a0=$(cpu $APID); n0=$(cpu $NPID)
plain=0; gz=0; lines=0; scrapes=0
end=$((SECONDS + DUR))
while [ $SECONDS -lt $end ]; do
  t=$(date +%s.%N)
  # One scrape a second, gzip-encoded as Prometheus asks for it.
  curl -s -H 'Accept-Encoding: gzip' -o "$work/s.gz" http://127.0.0.1:19100/metrics
  gunzip -c "$work/s.gz" >"$work/s.txt"
  plain=$((plain + $(stat -c %s "$work/s.txt")))
  gz=$((gz + $(stat -c %s "$work/s.gz")))
  lines=$((lines + $(grep -vc '^#' "$work/s.txt")))
  scrapes=$((scrapes + 1))
  sleep "$(python3 -c "import time;print(max(0.0, 1.0-(time.time()-$t)))")"
done
a1=$(cpu $APID); n1=$(cpu $NPID); ah=$(hwm $APID); nh=$(hwm $NPID)
kill -TERM $APID; wait $APID 2>/dev/null || true
udp=$(grep -o 'udp_tx_bytes=[0-9]*' "$work/a.log" | tail -1 | cut -d= -f2)
frames=$(grep -o 'batch_bytes=[0-9]*' "$work/a.log" | tail -1 | cut -d= -f2)
values=$("$CBIN/personactl" --api "$http" --data-dir "$work/c" status --json | python3 -c "import json,sys;print(json.load(sys.stdin)['samples'])")
python3 - <<PY
import json
a=$a1-$a0; n=$n1-$n0
if "${JSON:-0}" == "1":
    print(json.dumps({"duration_s": $DUR,
        "agent": {"cpu_s": a, "cpu_pct_of_one_core": a/$DUR*100, "peak_rss_mib": $ah/1048576},
        "node_exporter": {"cpu_s": n, "cpu_pct_of_one_core": n/$DUR*100, "peak_rss_mib": $nh/1048576, "scrapes": $scrapes},
        "cpu_ratio": a/n if n else None, "rss_ratio": $ah/$nh,
        "agent_bytes_per_value": {"frames": $frames/$values, "udp": $udp/$values, "values": $values},
        "node_exporter_bytes_per_sample": {"text": $plain/$lines, "gzip": $gz/$lines, "per_scrape": $lines//$scrapes}}))
    raise SystemExit(0)
print(f"duration_s           {$DUR}")
print(f"persona_agent_cpu_s  {a:.2f}  ({a/$DUR*100:.3f}% of one core)")
print(f"node_exporter_cpu_s  {n:.2f}  ({n/$DUR*100:.3f}% of one core, {$scrapes} scrapes)")
print(f"cpu_ratio_agent/ne   {a/n if n else float('nan'):.3f}")
print(f"persona_agent_rss    {$ah/1048576:.1f} MiB")
print(f"node_exporter_rss    {$nh/1048576:.1f} MiB")
print(f"rss_ratio_agent/ne   {$ah/$nh:.3f}")
print(f"persona_bytes/value  frames {$frames/$values:.2f}  udp payload {$udp/$values:.2f}  ({$values} values)")
print(f"node_exporter/sample text {$plain/$lines:.2f}  gzip {$gz/$lines:.2f}  ({$lines//$scrapes} samples per scrape)")
PY
