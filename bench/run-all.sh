#!/usr/bin/env bash
# Reruns every benchmark of docs/BENCHMARKS.md that has a number to keep, and regenerates
# the summary table there (between the run-all markers) from the medians of the runs.
#
# What runs, in order (each result is one JSON file under bench/out/run-all-<stamp>/):
#   mirror        mirror inference per window (bench_mirror, release)
#   profiler      profiler inference per description (bench_profiler, release)
#   replay        `personactl replay` of all 400 GWA-T-12 files: wall time and peak RSS
#   observe       the agent's own cost over OBSERVE_S seconds of `observe` at 1 s
#   side-by-side  agent daemon (1 s sampling, inference on, streaming) against
#                 node_exporter scraped every 1 s, RUNS times (bench/side-by-side.sh)
#   fleet         persona-loadgen with FLEET agents for LG_SECONDS, RUNS times
#   search        persona-loadgen at each N of SEARCH_N for SEARCH_SECONDS, once each, up
#                 to the first N that misses p99 ack <= 2 s or loses a batch; the table
#                 gives the largest N that holds the latency target and the largest that
#                 also keeps coordinator RSS <= 2 GiB
#
# Knobs (environment): RUNS=3 LG_SECONDS=300 FLEET=10000 SBS_SECONDS=300 OBSERVE_S=60
# SEARCH_N="20000 30000 40000 50000" SEARCH_SECONDS=120 ONLY="mirror fleet ..." (a subset)
# SKIP_BUILD=1 (use target/release as it is) QUICK=1 (a smoke run of the script itself: tiny sizes, and the table is written to
# bench/out only, never into docs/BENCHMARKS.md).
#
# Not a test, and not run in CI: the whole set takes about 75 minutes at the defaults.
# Run it as root on an otherwise quiet machine (`uptime` load under 0.5), with Debian's
# prometheus-node-exporter installed. All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
LG_SECONDS=${LG_SECONDS:-300}
FLEET=${FLEET:-10000}
SBS_SECONDS=${SBS_SECONDS:-300}
OBSERVE_S=${OBSERVE_S:-60}
SEARCH_N=${SEARCH_N:-20000 30000 40000 50000}
SEARCH_SECONDS=${SEARCH_SECONDS:-120}
ONLY=${ONLY:-mirror profiler replay observe side-by-side fleet search}
TRACES=${TRACES:-../shared/data/traces/bitbrains-gwa-t-12-rnd/rnd}
if [ "${QUICK:-0}" = 1 ]; then
    RUNS=1 LG_SECONDS=30 FLEET=200 SBS_SECONDS=10 OBSERVE_S=5 SEARCH_N="100 200" SEARCH_SECONDS=30
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/out/run-all-$stamp
mkdir -p "$out"
BIN=$(pwd)/target/release
log() { printf '[run-all %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building (release)"
    cargo build --release --workspace --bins >&2
    cargo build --release -p persona-models --features train --examples >&2
fi

{
    printf '{"stamp":"%s","cores":%s,"kernel":"%s","model":"%s","load_before":"%s","quick":%s}\n' \
        "$stamp" "$(nproc)" "$(uname -r)" \
        "$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "${QUICK:-0}"
} >"$out/machine.json"

if want mirror; then
    log "mirror inference"
    "$BIN/examples/bench_mirror" --iters 20000 >"$out/mirror.json"
fi
if want profiler; then
    log "profiler inference"
    "$BIN/examples/bench_profiler" --iters 1000 >"$out/profiler.json"
fi
if want replay && [ -d "$TRACES" ]; then
    log "trace replay"
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$out/replay.rss" "$BIN/personactl" replay --format bitbrains --json "$TRACES" >"$out/replay.doc.json" 2>/dev/null
    end=$(date +%s.%N)
    python3 -c "import json;print(json.dumps({'wall_s': $end-$start, 'peak_rss_mib': int(open('$out/replay.rss').read().split()[-1])/1024}))" >"$out/replay.json"
fi
if want observe; then
    log "agent observe, ${OBSERVE_S} s"
    "$BIN/persona-agent" observe --seconds "$OBSERVE_S" --json 2>/dev/null |
        python3 -c "import json,sys;print(json.dumps(json.load(sys.stdin)['summary']['self']))" >"$out/observe.json"
fi
if want side-by-side; then
    for i in $(seq "$RUNS"); do
        log "side-by-side run $i/$RUNS, ${SBS_SECONDS} s"
        JSON=1 DUR=$SBS_SECONDS BIN=$BIN bash bench/side-by-side.sh >"$out/side-by-side-$i.json"
    done
fi

# One loadgen run against a fresh coordinator; $1 agents, $2 seconds, $3 output file.
loadgen() {
    local n=$1 secs=$2 file=$3 dir cpid
    dir=$(mktemp -d)
    "$BIN/persona-coordinator" serve --data-dir "$dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 2>"$dir/coord.log" &
    cpid=$!
    for _ in $(seq 200); do [ -s "$dir/serving.json" ] && break; sleep 0.1; done
    # Ramp over 50 s, between 50 and 250 connections a second; about 100 agents per
    # loopback source address, and never more than 5 new connections a second from one
    # address (the coordinator's default allows 200/s from one address; this keeps the
    # runs comparable with those made when it was 20/s).
    local ramp=$((n / 50))
    [ "$ramp" -ge 50 ] || ramp=50
    [ "$ramp" -le 250 ] || ramp=250
    local ips=$(((n + 99) / 100))
    [ "$ips" -ge $(((ramp + 4) / 5)) ] || ips=$(((ramp + 4) / 5))
    [ "$ips" -le 250 ] || ips=250
    if ! PERSONA_LOG=warn "$BIN/persona-loadgen" --data-dir "$dir" --agents "$n" --ramp "$ramp" \
        --seconds "$secs" --source-ips "$ips" --json >"$file" 2>"$file.log"; then
        log "loadgen at $n agents failed; see $file.log"
    fi
    kill -TERM "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    rm -rf "$dir"
}
if want fleet; then
    for i in $(seq "$RUNS"); do
        log "fleet run $i/$RUNS: $FLEET agents for ${LG_SECONDS} s"
        loadgen "$FLEET" "$LG_SECONDS" "$out/fleet-$i.json"
    done
fi
if want search; then
    for n in $SEARCH_N; do
        log "search: $n agents for ${SEARCH_SECONDS} s"
        loadgen "$n" "$SEARCH_SECONDS" "$out/search-$n.json"
        # A larger N would only fail harder; stop at the first N that misses the latency
        # or the no-loss target. Memory over 2 GiB does not stop the search: the issue
        # asks for the largest N that holds the latency target, and the table reports
        # that one and the largest N that holds every target.
        if ! python3 -c "import json,sys;d=json.load(open(sys.argv[1]));p=d['ack_latency_ms']['p99'];sys.exit(0 if p is not None and p<=2000 and d['lost_batches']==0 and d['errors']==0 and d['duplicated_or_unexpected_batches']==0 else 1)" "$out/search-$n.json" 2>/dev/null; then
            log "search: $n agents missed the latency or no-loss target; stopping the search"
            break
        fi
    done
fi

log "table"
python3 bench/table.py "$out" >"$out/table.md"
if [ "${QUICK:-0}" != 1 ]; then
    python3 bench/table.py --replace docs/BENCHMARKS.md "$out"
    log "docs/BENCHMARKS.md updated"
fi
cat "$out/table.md"
