#!/usr/bin/env python3
"""How kubemux's cost grows: loadgen over subscriptions x keys.

Runs `loadgen --json` once per point and mode (kubemux, and the direct
baseline where this machine can hold it), and writes what it measured as
a CSV, a markdown table and an SVG plot drawn here (standard library
only, so the sweep needs nothing but the release build):

    cargo build --release --locked --bin kubemux --example loadgen
    python3 benches/sweep.py                 # the whole grid (~5 min, 20 points)
    python3 benches/sweep.py --plot-only     # redraw from the CSV

Every point delivers about the same frames per second (--frames-per-sec):
the churn rate is that divided by the subscriptions, so a point measures
how the cost of one frame grows with the number of subscribers and keys,
not how a saturated core queues. The direct baseline opens one HTTP watch
per subscription, so it needs that many sockets in loadgen and in the
simulated server; a point beyond the open-file limit is marked as not
run, with the reason. CI does not run the sweep.
"""

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import time

SUBSCRIPTIONS = (1_000, 10_000, 100_000)
KEYS = (1, 10, 100, 1_000)
MODES = ("direct", "kubemux")
COLUMNS = (
    "subscriptions",
    "keys",
    "mode",
    "connections",
    "subs_per_connection",
    "churn_rate",
    "status",
    "delivered_frames_per_sec",
    "server_cpu_us_per_frame",
    "latency_p99_ms",
    "server_rss_synced_mib",
    "upstream_watches",
    "slow_consumer_cuts",
    "errors",
    "load_average",
)
# Sockets loadgen and the simulated server need besides one per direct watch.
SPARE_FDS = 512


def shape(subscriptions):
    """Connections x subscriptions per connection for a total."""
    per_connection = 10 if subscriptions <= 10_000 else 100
    return subscriptions // per_connection, per_connection


def unreachable(mode, subscriptions):
    """Why a point cannot run on this machine, or None."""
    if mode != "direct":
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if subscriptions + SPARE_FDS > soft:
        return (
            f"not run: {subscriptions:,} direct watches need as many sockets "
            f"per process; open-file limit {soft:,}"
        )
    return None


def run_point(args, subscriptions, keys, mode):
    connections, per_connection = shape(subscriptions)
    rate = args.frames_per_sec / subscriptions
    row = {
        "subscriptions": subscriptions,
        "keys": keys,
        "mode": mode,
        "connections": connections if mode == "kubemux" else subscriptions,
        "subs_per_connection": per_connection if mode == "kubemux" else 1,
        "churn_rate": round(rate, 3),
    }
    why = unreachable(mode, subscriptions)
    if why:
        row["status"] = why
        return row
    command = [
        "taskset", "-c", args.loadgen_cpu, args.loadgen,
        "--bin", args.bin,
        "--proxy-cpu", args.proxy_cpu, "--sim-cpu", args.sim_cpu,
        "--mode", mode, "--json",
        "-m", str(connections), "-k", str(per_connection), "-d", str(keys),
        "-r", str(rate),
        "--warmup", str(args.warmup), "--duration", str(args.duration),
        "--object-profile", args.object_profile,
    ]
    print("+", " ".join(command), file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.point_timeout
        )
    except subprocess.TimeoutExpired:
        row["status"] = f"failed: no report within {args.point_timeout}s"
        return row
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        row["status"] = f"failed: {last[:120]}"
        return row
    report = json.loads(done.stdout)[0]
    row["status"] = "ok"
    for column in COLUMNS:
        if column not in row and column in report:
            row[column] = report[column]
    return row


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def number(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def cell(row, column, digits):
    if row is None:
        return "—"
    if row.get("status") != "ok":
        return "—"
    x = number(row.get(column))
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def markdown(rows):
    """One line per point: kubemux and direct side by side, with ratios."""
    by = {(int(r["subscriptions"]), int(r["keys"]), r["mode"]): r for r in rows}
    out = [
        "| subscriptions | keys | connections × subs | events/s | frames/s (kubemux) "
        "| CPU/frame µs kubemux / direct | p99 ms kubemux / direct "
        "| RSS MiB kubemux / direct | upstream watches | load avg | notes |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for subs in SUBSCRIPTIONS:
        for keys in KEYS:
            ours = by.get((subs, keys, "kubemux"))
            theirs = by.get((subs, keys, "direct"))
            if ours is None and theirs is None:
                continue
            notes = []
            for name, row in (("kubemux", ours), ("direct", theirs)):
                if row is not None and row.get("status") != "ok":
                    notes.append(f"{name} {row['status']}")
            loads = "/".join(
                cell(r, "load_average", 1) for r in (ours, theirs) if r is not None
            )
            reference = ours or theirs
            out.append(
                f"| {subs:,} | {keys:,} | {int(reference['connections']):,} × "
                f"{reference['subs_per_connection']} | {number(reference['churn_rate']):g} "
                f"| {cell(ours, 'delivered_frames_per_sec', 0)} "
                f"| {cell(ours, 'server_cpu_us_per_frame', 2)} / {cell(theirs, 'server_cpu_us_per_frame', 2)} "
                f"| {cell(ours, 'latency_p99_ms', 0)} / {cell(theirs, 'latency_p99_ms', 0)} "
                f"| {cell(ours, 'server_rss_synced_mib', 0)} / {cell(theirs, 'server_rss_synced_mib', 0)} "
                f"| {cell(ours, 'upstream_watches', 0)} | {loads} | {'; '.join(notes)} |"
            )
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the plot

WIDTH, HEIGHT = 960, 360
PANEL_W, PANEL_H = 250, 220
LEFT, TOP = 70, 50
GAP = 70
COLOURS = {1: "#1b6ca8", 10: "#2a9d3a", 100: "#d98b00", 1000: "#b8302a"}
PANELS = (
    ("server_cpu_us_per_frame", "server CPU per frame, µs"),
    ("latency_p99_ms", "latency p99, ms"),
    ("server_rss_synced_mib", "server RSS after sync, MiB"),
)


def log_ticks(lo, hi):
    """Powers of ten (and 2, 5 between them when the span is short)."""
    ticks = []
    e = math.floor(math.log10(lo))
    while 10**e <= hi * 1.0001:
        for m in (1, 2, 5) if math.log10(hi / lo) < 2.5 else (1,):
            t = m * 10**e
            if lo / 1.0001 <= t <= hi * 1.0001:
                ticks.append(t)
        e += 1
    return ticks


def label(x):
    return f"{x:,.0f}" if x >= 10 else f"{x:g}"


def panel(x0, column, title, rows):
    """One log-log panel: the column against subscriptions, a line per keys
    value and mode (kubemux solid, direct dashed)."""
    points = {}
    for row in rows:
        y = number(row.get(column)) if row.get("status") == "ok" else None
        if y is None or y <= 0:
            continue
        series = (row["mode"], int(row["keys"]))
        points.setdefault(series, []).append((int(row["subscriptions"]), y))
    ys = [y for series in points.values() for _, y in series]
    if not ys:
        return []
    lo = 10 ** math.floor(math.log10(min(ys)))
    hi = 10 ** math.ceil(math.log10(max(ys)))
    if hi / lo < 10:
        hi = lo * 10
    xlo, xhi = math.log10(SUBSCRIPTIONS[0]), math.log10(SUBSCRIPTIONS[-1])

    def sx(x):
        return x0 + (math.log10(x) - xlo) / (xhi - xlo) * PANEL_W

    def sy(y):
        return TOP + PANEL_H - (math.log10(y) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo)
        ) * PANEL_H

    out = [
        f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 14}" text-anchor="middle" '
        f'font-weight="bold">{title}</text>',
        f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" '
        'fill="none" stroke="#999"/>',
    ]
    for t in log_ticks(lo, hi):
        y = sy(t)
        out.append(
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label(t)}</text>'
        )
    for s in SUBSCRIPTIONS:
        x = sx(s)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PANEL_H}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{TOP + PANEL_H + 16}" text-anchor="middle">{s // 1000}k</text>'
        )
    out.append(
        f'<text x="{x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 34}" '
        'text-anchor="middle">subscriptions</text>'
    )
    for (mode, keys), series in sorted(points.items()):
        series.sort()
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series)
        dash = ' stroke-dasharray="5,4"' if mode == "direct" else ""
        colour = COLOURS.get(keys, "#555")
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for x, y in series:
            marker = (
                f'<rect x="{sx(x) - 3:.1f}" y="{sy(y) - 3:.1f}" width="6" height="6" fill="white" stroke="{colour}"/>'
                if mode == "direct"
                else f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>'
            )
            out.append(marker)
    return out


def svg(rows, caption):
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
    ]
    for i, (column, title) in enumerate(PANELS):
        out.extend(panel(LEFT + i * (PANEL_W + GAP), column, title, rows))
    y = TOP + PANEL_H + 56
    x = LEFT
    for keys, colour in COLOURS.items():
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{x + 30}" y="{y + 4}">{keys:,} key{"s" if keys > 1 else ""}</text>')
        x += 100
    out.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="#555" stroke-width="2"/>')
    out.append(f'<text x="{x + 30}" y="{y + 4}">kubemux</text>')
    x += 90
    out.append(
        f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="#555" stroke-width="2" stroke-dasharray="5,4"/>'
    )
    out.append(f'<text x="{x + 30}" y="{y + 4}">direct baseline</text>')
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" fill="#555">{caption}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loadgen", default="target/release/examples/loadgen")
    parser.add_argument("--bin", default="target/release/kubemux")
    parser.add_argument("--proxy-cpu", default="1")
    parser.add_argument("--sim-cpu", default="0")
    parser.add_argument("--loadgen-cpu", default="0")
    parser.add_argument("--frames-per-sec", type=float, default=50_000)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--object-profile", default="small")
    parser.add_argument("--point-timeout", type=int, default=900)
    parser.add_argument("--subscriptions", type=int, nargs="*", default=list(SUBSCRIPTIONS))
    parser.add_argument("--keys", type=int, nargs="*", default=list(KEYS))
    parser.add_argument("--out", default="benches/sweep", help="prefix of .csv and .md")
    parser.add_argument("--svg", default="docs/sweep.svg")
    parser.add_argument("--plot-only", action="store_true", help="redraw from the CSV")
    args = parser.parse_args()
    csv_path = args.out + ".csv"
    if args.plot_only:
        rows = read_rows(csv_path)
    else:
        old = read_rows(csv_path) if os.path.exists(csv_path) else []
        rows = []
        for subscriptions in args.subscriptions:
            for keys in args.keys:
                for mode in MODES:
                    rows.append(run_point(args, subscriptions, keys, mode))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        # Points not swept this time keep their last measurement.
        swept = {(int(r["subscriptions"]), int(r["keys"]), r["mode"]) for r in rows}
        rows = [r for r in old if (int(r["subscriptions"]), int(r["keys"]), r["mode"]) not in swept] + rows
        rows.sort(key=lambda r: (int(r["subscriptions"]), int(r["keys"]), MODES.index(r["mode"])))
        write_csv(csv_path, rows)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(rows))
    loads = [number(r.get("load_average")) for r in rows if r.get("status") == "ok"]
    loads = [x for x in loads if x is not None]
    caption = (
        f"kubemux sweep, {time.strftime('%Y-%m-%d')}: ~{args.frames_per_sec:,.0f} frames/s per point; "
        f"load average {min(loads):.1f}–{max(loads):.1f}" if loads else "kubemux sweep"
    )
    with open(args.svg, "w") as f:
        f.write(svg(rows, caption))


if __name__ == "__main__":
    main()
