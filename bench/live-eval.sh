#!/usr/bin/env bash
# Live-workload evaluation of behavioural mirroring (docs/EVALUATION.md, "Mirroring:
# live workloads"). Runs real workloads on this machine one after the other and records
# what `persona-agent observe` (the shipped mirror model) makes of each.
#
#   bench/live-eval.sh                  # all workloads, 120 s each
#   DURATION=60 bench/live-eval.sh idle video
#
# Needs: a release build of persona-agent (built if missing), gcc and make, ffmpeg,
# nginx and ab (apache2-utils), PostgreSQL (initdb, pg_ctl, postgres, pgbench) and cargo.
# Debian: apt-get install ffmpeg nginx-light apache2-utils postgresql gcc make.
# Run it as root (PostgreSQL runs as `nobody`) on a machine that is otherwise quiet:
# anything else running shows up in the windows. Output: one JSON document per workload
# in $OUT (default bench/out/live-eval-<time>/), a line per workload on stderr, and the
# Markdown table on stdout. The observe documents can be re-scored with another model:
#   cargo run --release -p persona-models --example replay_observe -- --model FILE $OUT/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-120}"
WARMUP="${WARMUP:-5}"
OUT="${OUT:-bench/out/live-eval-$(date -u +%Y%m%dT%H%M%SZ)}"
AGENT="${AGENT:-target/release/persona-agent}"
ALL=(idle compiler-gcc compiler-cargo database video http)
if (($# > 0)); then WORKLOADS=("$@"); else WORKLOADS=("${ALL[@]}"); fi
[[ -x "$AGENT" ]] || cargo build --release -p persona-agent >&2
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/persona-live-eval.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
    if [[ -f "$WORK/pg/postmaster.pid" ]]; then
        runuser -u nobody -- pg_ctl -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    [[ -f "$WORK/nginx.pid" ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- workloads: each starts in the background and runs until killed ---------------
start_idle() { :; }

start_compiler-gcc() {
    local d="$WORK/gcc"
    mkdir -p "$d"
    for i in $(seq 1 48); do
        {
            echo "#include <stdio.h>"
            for f in $(seq 1 60); do
                echo "double f${i}_${f}(double x){double s=0;for(int k=0;k<100;k++){s+=x*k/(k+1.0)+__builtin_sin(x+k);}return s;}"
            done
        } >"$d/u$i.c"
    done
    printf 'SRC=$(wildcard *.c)\nOBJ=$(SRC:.c=.o)\nall: $(OBJ)\n%%.o: %%.c\n\tgcc -O2 -c $< -o $@\nclean:\n\trm -f *.o\n' >"$d/Makefile"
    (cd "$d" && while :; do make -s clean; make -s -j"$(nproc)" all; done) >/dev/null 2>&1 &
    PIDS+=($!)
}

start_compiler-cargo() {
    (while :; do
        rm -rf "$WORK/cargo-target"
        cargo build --offline --release -p persona-shared --target-dir "$WORK/cargo-target"
    done) >/dev/null 2>&1 &
    PIDS+=($!)
}

start_database() {
    local d="$WORK/pg"
    mkdir -p "$d" "$WORK/pgsock"
    chown nobody "$d" "$WORK/pgsock"
    runuser -u nobody -- initdb -D "$d" -A trust -U postgres >/dev/null
    runuser -u nobody -- pg_ctl -D "$d" -o "-k $WORK/pgsock -p 54329 -c listen_addresses=''" -l "$WORK/pgsock/pg.log" -w start >/dev/null
    runuser -u nobody -- pgbench -h "$WORK/pgsock" -p 54329 -U postgres -i -s 20 postgres >/dev/null 2>&1
    runuser -u nobody -- pgbench -h "$WORK/pgsock" -p 54329 -U postgres -c 8 -j 2 -T 100000 postgres >/dev/null 2>&1 &
    PIDS+=($!)
}

start_video() {
    ffmpeg -loglevel error -f lavfi -i testsrc2=size=1920x1080:rate=30 -c:v libx264 -preset medium \
        -y "$WORK/out.mp4" >/dev/null 2>&1 &
    PIDS+=($!)
}

start_http() {
    head -c 16384 /dev/urandom >"$WORK/f.bin"
    cat >"$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server { listen 127.0.0.1:18089; root $WORK; location / { } }
}
CONF
    nginx -c "$WORK/nginx.conf"
    ab -q -k -c 32 -t 100000 -n 100000000 http://127.0.0.1:18089/f.bin >/dev/null 2>&1 &
    PIDS+=($!)
}

stop_all() {
    for p in "${PIDS[@]:-}"; do
        [[ -n "$p" ]] || continue
        pkill -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    PIDS=()
    if [[ -f "$WORK/pg/postmaster.pid" ]]; then
        runuser -u nobody -- pg_ctl -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
    fi
    if [[ -f "$WORK/nginx.pid" ]]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; rm -f "$WORK/nginx.pid"; fi
    sleep 3
}

echo "| workload | command | top 1 | top 2 | top 3 | mean CPU busy | load before (1 min) |"
echo "|---|---|---|---|---|---|---|"
for w in "${WORKLOADS[@]}"; do
    load_before="$(cut -d' ' -f1 /proc/loadavg)"
    "start_$w"
    sleep "$WARMUP"
    "$AGENT" observe --seconds "$((DURATION - WARMUP))" --json >"$OUT/$w.json" 2>/dev/null
    stop_all
    python3 - "$w" "$OUT/$w.json" "$load_before" <<'PY'
import json, sys
w, path, load = sys.argv[1], sys.argv[2], sys.argv[3]
cmds = {
    "idle": "nothing",
    "compiler-gcc": "make -j$(nproc) over 48 generated C files (gcc -O2), in a loop",
    "compiler-cargo": "cargo build --offline --release -p persona-shared, from scratch, in a loop",
    "database": "PostgreSQL 15, pgbench -i -s 20, then pgbench -c 8 -j 2 (TPC-B-like)",
    "video": "ffmpeg -f lavfi -i testsrc2=size=1920x1080:rate=30 -c:v libx264 -preset medium",
    "http": "nginx (auto workers) serving a 16 KiB file on 127.0.0.1, ab -k -c 32",
}
d = json.load(open(path))
s = d["samples"]
busy = sum(1 - x["host"]["cpu.idle_ratio"] for x in s if x["host"]["cpu.idle_ratio"] is not None) / max(1, len(s))
top = d["mirror"][:3] + [{"slug": "-", "probability": 0}] * 3
cells = [f'{t["slug"]} {t["probability"]:.2f}' for t in top[:3]]
print(f"| {w} | `{cmds.get(w, w)}` | " + " | ".join(cells) + f" | {busy*100:.0f}% | {load} |")
print(f"{w}: " + ", ".join(cells) + f" (cpu {busy*100:.0f}%, model {d.get('mirror_model')})", file=sys.stderr)
PY
done
