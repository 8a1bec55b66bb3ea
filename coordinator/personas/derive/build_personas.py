#!/usr/bin/env python3
"""Builds coordinator/personas/<slug>.toml from the hand-written meta files in
derive/meta/<slug>.toml plus weekly usage shapes derived from the real traces.

Why: every persona needs a week of hourly p50/p95 values (7x24) per resource. No public
trace is labelled with personas, so the *shape* of a week (when load rises and falls, how
far p95 sits above p50) comes from real traces and the *level* (how many cores, GiB, IOPS,
Mbps a persona needs at its p95) comes from the vendor sizing guide cited in the meta file.
The series written into the persona file are `requirement x shape`; the meta file says
which shape family each persona uses.

Shape families (all hour-of-week, index 0 = Monday 00:00 local time):
  bitbrains-diurnal  Bitbrains GWA-T-12 Rnd, July 2013, VMs whose weekday office-hours CPU
                     mean is >= 1.5x their night mean (enterprise/financial interactive load).
  bitbrains-steady   Same month, busy VMs (mean CPU >= 5 %) with day/night ratio in
                     [0.8, 1.25]: servers whose load does not follow the office day.
  bitbrains-evening  bitbrains-diurnal rotated by +9 h so the peak falls in the evening.
                     ASSUMPTION (no streaming trace is available): streaming sessions
                     happen in the evening; only the timing is assumed, levels are sourced.
  alibaba-batch      Alibaba cluster-trace-v2018 machine_usage sample (14 hosts, 8 days):
                     co-located batch/online hosts; day 0 of the window is mapped to Monday
                     (the sample does not say which weekday it starts on).

Bitbrains timestamps are Unix seconds (UTC); the provider is Dutch, so local time is
UTC+2 (CEST) in July 2013. Each VM's metric is normalised by its own month p95 before VMs
are pooled, so big VMs do not dominate; per hour-of-week bucket the pooled p50 and p95 are
taken and the series is scaled so that the week's largest p95 is 1.0.
Bitbrains has no IOPS column: the disk IOPS shape is the disk throughput shape.

Run from the repository root:  python3 coordinator/personas/derive/build_personas.py
It needs only the Python 3.11 standard library and writes shapes.json next to itself
(the derived shapes, for review) and the persona files. Deterministic: same input, same output.
"""
import csv
import gzip
import json
import math
import os
import sys
import tomllib

ROOT = os.path.dirname(os.path.abspath(__file__))
PERSONAS = os.path.dirname(ROOT)
TRACES = os.environ.get("PERSONA_TRACES", os.path.join(PERSONAS, "..", "..", "..", "shared", "data", "traces"))
BB = os.path.join(TRACES, "bitbrains-gwa-t-12-rnd", "rnd", "2013-7")
ALI = os.path.join(TRACES, "alibaba-cluster-trace-v2018-sample", "machine_usage.csv.gz")
LOCAL_OFFSET_S = 2 * 3600  # CEST
METRICS = ["cpu", "mem", "disk", "net"]


def pct(sorted_vals, q):
    if not sorted_vals:
        return 0.0
    k = (len(sorted_vals) - 1) * q
    f = math.floor(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def how(ts_local):
    # 1970-01-01 was a Thursday: day index 3 when Monday = 0.
    days = ts_local // 86400
    return ((days + 3) % 7) * 24 + (ts_local % 86400) // 3600


def load_bitbrains():
    vms = {}
    for vm in range(1, 301):
        path = os.path.join(BB, f"{vm}.csv.gz")
        rows = []
        with gzip.open(path, "rt") as f:
            next(f)
            for line in f:
                p = [x.strip() for x in line.split(";")]
                if len(p) < 11:
                    continue
                try:
                    ts, cores, cap, use = int(float(p[0])), float(p[1]), float(p[2]), float(p[3])
                    mem, dr, dw, nr, nt = float(p[6]), float(p[7]), float(p[8]), float(p[9]), float(p[10])
                except ValueError:
                    continue
                if cores <= 0 or cap <= 0:
                    continue  # VM not yet existing (README: 0 cores in first rows)
                rows.append((how(ts + LOCAL_OFFSET_S), use / (cap / cores), mem, dr + dw, nr + nt))
        if rows:
            vms[vm] = rows
    return vms


def day_night_ratio(rows):
    day = [r[1] for r in rows if r[0] // 24 < 5 and 9 <= r[0] % 24 < 17]
    night = [r[1] for r in rows if 0 <= r[0] % 24 < 6]
    if not day or not night:
        return None
    n = sum(night) / len(night)
    d = sum(day) / len(day)
    return d / n if n > 0 else None


def shape_from(series_by_source):
    """series_by_source: list of lists of (how, {metric: value}); each source is normalised
    by its own p95 per metric, then pooled per hour-of-week."""
    buckets = {m: [[] for _ in range(168)] for m in METRICS}
    for rows in series_by_source:
        for m in METRICS:
            vals = sorted(r[1][m] for r in rows)
            p95 = pct(vals, 0.95)
            if p95 <= 0:
                continue
            for h, v in rows:
                buckets[m][h].append(v[m] / p95)
    out = {}
    for m in METRICS:
        p50 = []
        p95 = []
        for h in range(168):
            b = sorted(buckets[m][h])
            p50.append(pct(b, 0.5))
            p95.append(pct(b, 0.95))
        top = max(p95) or 1.0
        out[m] = {"p50": [x / top for x in p50], "p95": [x / top for x in p95]}
    return out


def bitbrains_shapes():
    vms = load_bitbrains()
    diurnal, steady = [], []
    for vm, rows in sorted(vms.items()):
        cpu_pct_mean = 0.0
        mean_cores = sum(r[1] for r in rows) / len(rows)
        cores_est = max(1.0, max(r[1] for r in rows))
        cpu_pct_mean = mean_cores / cores_est * 100
        if mean_cores <= 0:
            continue
        ratio = day_night_ratio(rows)
        if ratio is None:
            continue
        if ratio >= 1.5 and mean_cores >= 0.02:
            diurnal.append(vm)
        elif 0.8 <= ratio <= 1.25 and cpu_pct_mean >= 5:
            steady.append(vm)
    conv = lambda vm: [(r[0], {"cpu": r[1], "mem": r[2], "disk": r[3], "net": r[4]}) for r in vms[vm]]
    return (
        shape_from([conv(v) for v in diurnal]),
        shape_from([conv(v) for v in steady]),
        diurnal,
        steady,
    )


def alibaba_shape():
    hosts = {}
    with gzip.open(ALI, "rt") as f:
        for row in csv.reader(f):
            try:
                mid, ts, cpu, mem = row[0], int(row[1]), float(row[2]), float(row[3])
                net = float(row[6] or 0) + float(row[7] or 0)
                disk = float(row[8]) if row[8] else -1
            except (ValueError, IndexError):
                continue
            if disk < 0 or disk > 100:
                continue  # invalid per schema (-1 or 101)
            hosts.setdefault(mid, []).append(((ts // 3600) % 168, {"cpu": cpu, "mem": mem, "disk": disk, "net": net}))
    return shape_from(list(hosts.values())), sorted(hosts)


def class_levels():
    """Per-VM p95 levels of busy Bitbrains VMs (mean CPU >= 5 %), grouped by provisioned
    core count, from the trace's manifest.tsv (July 2013). Used where no vendor guide
    gives a number: the median and 90th percentile across VMs of each VM's own p95."""
    man = os.path.join(TRACES, "bitbrains-gwa-t-12-rnd", "manifest.tsv")
    rows = [r for r in csv.DictReader(open(man), delimiter="\t") if r["month"] == "2013-7"]
    out = {}
    for cores in (1, 2, 4, 8):
        sel = [r for r in rows if float(r["max_cpu_cores"]) == cores and float(r["cpu_pct_mean"]) >= 5]
        cols = {
            "cpu_cores_p95": sorted(float(r["cpu_pct_p95"]) / 100 * cores for r in sel),
            "memory_used_gib_p95": sorted(float(r["mem_used_pct_p95"]) / 100 * float(r["max_mem_provisioned_gib"]) for r in sel),
            "memory_provisioned_gib": sorted(float(r["max_mem_provisioned_gib"]) for r in sel),
            "disk_mbps_p95": sorted(float(r["disk_rw_kbps_p95"]) / 1024 for r in sel),
            "network_mbps_p95": sorted(float(r["net_rxtx_kbps_p95"]) * 8 / 1000 for r in sel),
        }
        out[f"cores{cores}"] = {"vms": [int(r["vm_id"]) for r in sel],
                                **{k: {"median": round(pct(v, 0.5), 3), "p90": round(pct(v, 0.9), 3)} for k, v in cols.items()}}
    return out


def rotate(shape, hours):
    return {m: {k: v[-hours:] + v[:-hours] for k, v in s.items()} for m, s in shape.items()}


def fmt_week(vals, decimals):
    rows = []
    for d in range(7):
        day = vals[d * 24:(d + 1) * 24]
        rows.append("  [" + ", ".join(f"{x:.{decimals}f}" for x in day) + "],")
    return "[\n" + "\n".join(rows) + "\n]"


RESOURCES = [
    ("cpu_cores", "cpu", 2),
    ("memory_gib", "mem", 2),
    ("disk_iops", "disk", 0),
    ("disk_mbps", "disk", 1),
    ("network_mbps", "net", 1),
]


def main():
    bd, bs, dvms, svms = bitbrains_shapes()
    ali, hosts = alibaba_shape()
    levels = class_levels()
    print(json.dumps({k: {m: x for m, x in v.items() if m != "vms"} for k, v in levels.items()}, indent=1), file=sys.stderr)
    shapes = {
        "bitbrains-diurnal": bd,
        "bitbrains-steady": bs,
        "bitbrains-evening": rotate(bd, 9),
        "alibaba-batch": ali,
    }
    provenance = {
        "bitbrains-diurnal": {"trace": "bitbrains-gwa-t-12-rnd/rnd/2013-7", "vms": dvms},
        "bitbrains-steady": {"trace": "bitbrains-gwa-t-12-rnd/rnd/2013-7", "vms": svms},
        "bitbrains-evening": {"trace": "bitbrains-diurnal rotated +9h", "vms": dvms},
        "alibaba-batch": {"trace": "alibaba-cluster-trace-v2018-sample/machine_usage.csv.gz", "hosts": hosts},
    }
    with open(os.path.join(ROOT, "shapes.json"), "w") as f:
        json.dump({"provenance": provenance, "class_levels": levels, "shapes": shapes}, f, indent=None, separators=(",", ":"))
        f.write("\n")
    meta_dir = os.path.join(ROOT, "meta")
    for name in sorted(os.listdir(meta_dir)):
        if not name.endswith(".toml"):
            continue
        text = open(os.path.join(meta_dir, name)).read()
        meta = tomllib.loads(text)
        family = meta["usage_shape"]["family"]
        shape = shapes[family]
        req = meta["requirements"]
        out = ["# GENERATED by coordinator/personas/derive/build_personas.py from derive/meta/" + name + ".",
               "# Edit the meta file and re-run the script; do not edit this file by hand.",
               "", text.rstrip("\n"), "",
               "# Weekly usage: hour-of-week rows (Monday first, 24 hourly values each).",
               f"# p95 = requirement x {family} p95 shape, p50 = requirement x {family} p50 shape.",
               "# Provenance of the shape: " + json.dumps(provenance[family]["trace"]) + ", "
               + str(len(provenance[family].get("vms", provenance[family].get("hosts", [])))) + " sources (listed in derive/shapes.json).",
               "[usage]"]
        for key, metric, dec in RESOURCES:
            level = float(req[key]["value"])
            p50 = [round(level * x, dec) for x in shape[metric]["p50"]]
            p95 = [round(level * x, dec) for x in shape[metric]["p95"]]
            p95 = [max(a, b) for a, b in zip(p50, p95)]
            out.append(f"[usage.{key}]")
            out.append("p50 = " + fmt_week(p50, dec))
            out.append("p95 = " + fmt_week(p95, dec))
        with open(os.path.join(PERSONAS, name), "w") as f:
            f.write("\n".join(out) + "\n")
        print(f"wrote {name} ({family})", file=sys.stderr)
    print(f"diurnal VMs: {len(dvms)}, steady VMs: {len(svms)}, alibaba hosts: {len(hosts)}", file=sys.stderr)


if __name__ == "__main__":
    main()
