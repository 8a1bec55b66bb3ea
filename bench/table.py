#!/usr/bin/env python3
"""Summary table of one bench/run-all.sh run: the median of each figure over its runs,
with the runs in brackets, the target, and the command behind it.

    python3 bench/table.py OUT_DIR                      # prints the table (Markdown)
    python3 bench/table.py --replace FILE.md OUT_DIR    # rewrites FILE.md between
                                                        # <!-- run-all:begin/end -->

A figure whose files are missing is left out, so a partial run (ONLY=...) gives a
partial table; a failed loadgen run (no JSON) counts as a failed run, not a zero.
"""
import json
import statistics
import sys
from pathlib import Path

BEGIN, END = "<!-- run-all:begin -->", "<!-- run-all:end -->"
GIB = 1024.0


def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def runs(out, prefix):
    docs = [load(p) for p in sorted(Path(out).glob(prefix + "-*.json"))]
    return [d for d in docs if d is not None]


def fmt(v, digits):
    return f"{v:,.{digits}f}"


def med(values, digits=1):
    if not values:
        return None
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m, digits)
    return f"**{fmt(m, digits)}** ({' / '.join(fmt(v, digits) for v in values)})"


def table(out):
    machine = load(Path(out) / "machine.json") or {}
    rows = []

    def row(name, cell, target, command):
        if cell is not None:
            rows.append(f"| {name} | {cell} | {target} | `{command}` |")

    m = load(Path(out) / "mirror.json")
    if m:
        row("mirror inference per window (µs, mean)", fmt(m["mean_us"], 1), "≤ 200",
            "bench_mirror --iters 20000")
    p = load(Path(out) / "profiler.json")
    if p:
        row("profiler inference per description (µs, p50)", fmt(p["predict_us"]["p50"], 0), "",
            "bench_profiler --iters 1000")
    r = load(Path(out) / "replay.json")
    if r:
        row("replay of 400 trace files (s wall / MiB peak)",
            f"{r['wall_s']:.1f} / {r['peak_rss_mib']:.0f}", "≤ 60 s",
            "personactl replay --format bitbrains --json TRACES")
    o = load(Path(out) / "observe.json")
    if o:
        row("agent `observe` loop CPU (% of one core) / peak RSS (MiB)",
            f"{o.get('sched_loop_cpu_pct_of_one_core', o['loop_cpu_pct_of_one_core']):.3f}"
            f" / {o['peak_rss_bytes'] / 1048576:.1f}",
            "≤ 0.3 % / ≤ 15 MiB", "persona-agent observe --seconds N --json")

    sbs = runs(out, "side-by-side")
    if sbs:
        cmd = "JSON=1 DUR=S bash bench/side-by-side.sh"
        row("agent daemon CPU (% of one core), inference on",
            med([d["agent"]["cpu_pct_of_one_core"] for d in sbs], 3), "≤ 0.3 %", cmd)
        row("agent daemon peak RSS (MiB)", med([d["agent"]["peak_rss_mib"] for d in sbs]),
            "≤ 15 MiB", cmd)
        row("node_exporter CPU (% of one core), scraped 1/s",
            med([d["node_exporter"]["cpu_pct_of_one_core"] for d in sbs], 3), "", cmd)
        row("CPU ratio agent / node_exporter",
            med([d["cpu_ratio"] for d in sbs if d["cpu_ratio"] is not None], 3), "≤ 0.333", cmd)
        row("bytes per value on the wire, agent (QUIC UDP payload)",
            med([d["agent_bytes_per_value"]["udp"] for d in sbs], 2), "", cmd)
        row("bytes per sample, node_exporter (gzip text)",
            med([d["node_exporter_bytes_per_sample"]["gzip"] for d in sbs], 2), "", cmd)

    fleet = runs(out, "fleet")
    if fleet:
        n = fleet[0]["agents"]
        cmd = f"persona-loadgen --agents {n} --seconds S --json"
        row(f"{n:,} agents: accepted values per second",
            med([d["accepted_values_per_s"] for d in fleet], 0), f"{n * 40:,}", cmd)
        row(f"{n:,} agents: ack p99 (ms)",
            med([d["ack_latency_ms"]["p99"] for d in fleet if d["ack_latency_ms"]["p99"] is not None], 1), "≤ 2,000", cmd)
        row(f"{n:,} agents: batches lost / duplicated / connection errors",
            " / ".join(str(sum(d[k] for d in fleet))
                       for k in ("lost_batches", "duplicated_or_unexpected_batches", "errors"))
            + f" (over {len(fleet)} runs)", "0 / 0 / 0", cmd)
        row(f"{n:,} agents: coordinator CPU (% of one core)",
            med([d["coordinator"]["cpu_pct_of_one_core"] for d in fleet]), "", cmd)
        row(f"{n:,} agents: coordinator peak RSS (MiB)",
            med([d["coordinator"]["peak_rss_mib"] for d in fleet], 0), "≤ 2,048", cmd)
        row(f"{n:,} agents: load generator CPU (% of one core)",
            med([d["loadgen"]["cpu_pct_of_one_core"] for d in fleet]), "", cmd)

    search = sorted(runs(out, "search"), key=lambda d: d["agents"])
    if search:
        def latency_holds(d):
            return ((d["ack_latency_ms"]["p99"] or float("inf")) <= 2000
                    and d["lost_batches"] == 0 and d["errors"] == 0
                    and d["duplicated_or_unexpected_batches"] == 0)

        def all_hold(d):
            return latency_holds(d) and d["coordinator"]["peak_rss_mib"] <= 2 * GIB

        # The answer is the largest N below the first N that failed; when every N tried
        # held, the limit is above the largest tried, and the cell says so.
        def largest(ok):
            held = []
            for d in search:
                if not ok(d):
                    break
                held.append(d["agents"])
            if not held:
                return f"below {search[0]['agents']:,}"
            if len(held) == len(search):
                return f"**≥ {max(held):,}** (every N tried held)"
            return f"**{max(held):,}**"
        tried = ", ".join(
            f"{d['agents']:,}: p99 {d['ack_latency_ms']['p99'] or float('nan'):.0f} ms, "
            f"{d['lost_batches']} lost, coordinator {d['coordinator']['cpu_pct_of_one_core']:.0f} % / "
            f"{d['coordinator']['peak_rss_mib']:.0f} MiB, loadgen "
            f"{d['loadgen']['cpu_pct_of_one_core']:.0f} %" for d in search)
        cmd = "SEARCH_N=... bench/run-all.sh"
        row("largest N holding p99 ack ≤ 2 s with no loss", largest(latency_holds), "", cmd)
        row("largest N holding that and coordinator RSS ≤ 2 GiB", largest(all_hold), "", cmd)
        rows.append(f"| (search runs, steady window {search[0].get('steady_window_s', 0):.0f} s each) | {tried} | | |")

    head = (f"Generated by `bench/run-all.sh` on {machine.get('stamp', '?')}: "
            f"{machine.get('cores', '?')} cores ({machine.get('model', '?')}), kernel "
            f"{machine.get('kernel', '?')}, load average before {machine.get('load_before', '?')}. "
            "Median of the runs, the runs in brackets.\n\n"
            "| figure | median (runs) | target | command |\n|---|---|---|---|\n")
    return head + "\n".join(rows) + "\n"


def main(argv):
    if len(argv) == 3 and argv[0] == "--replace":
        doc_path, out = Path(argv[1]), argv[2]
        text = doc_path.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"{doc_path}: no {BEGIN} ... {END} markers")
        a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
        doc_path.write_text(text[:a] + "\n" + table(out) + text[b:])
    elif len(argv) == 1:
        sys.stdout.write(table(argv[0]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
