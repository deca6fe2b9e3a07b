#!/usr/bin/env python3
"""The one table of `benches/proxy.sh`: req/s and p99 of every proxy, and issue 21's ratios.

    benches/proxy_table.py RESULTS [--instructions FILE]

RESULTS has one line per wrk run: `round size conns proxy req/s p50_us p99_us` (size is
the answer's length in bytes, or `mock`). The table has a column per (answer size,
connections) and a row per proxy ("req/s (p99)"), then a row per ratio. A ratio that
issue 21 sets a target for says whether this run met it. With more than one round, each
figure is the median of the rounds and each ratio the median of the rounds' ratios (a
ratio comes from measurements of the same minute, never from two rounds).

FILE is the output of `benches/proxy_instructions.sh`; its `RESULT` line gives the
instructions per proxied GET, a target too.
"""

import argparse
import collections
import re
import statistics
import sys

PROXIES = ["direct", "nginx", "floor", "agentgate", "envoy", "traefik"]

# Answers of at least this many bytes take the large-answer targets; smaller ones the
# small-answer targets (issue 21 names 6 bytes and 16 KiB).
LARGE = 16384

# (label, figure, numerator, denominator, {(size class, conns): (op, bound)}): the
# ratios of the table, with issue 21's targets.
RATIOS = [
    ("agentgate/nginx req/s", "rps", "agentgate", "nginx",
     {("small", 64): (">=", 0.8), ("small", 1): (">=", 0.95),
      ("large", 64): (">=", 0.9), ("large", 1): (">=", 1.0)}),
    ("agentgate/nginx p99", "p99", "agentgate", "nginx", {("small", 64): ("<=", 1.5)}),
    ("agentgate/envoy req/s", "rps", "agentgate", "envoy", {("small", 64): (">=", 3.0)}),
    ("agentgate/traefik req/s", "rps", "agentgate", "traefik", {("small", 64): (">=", 3.0)}),
    ("agentgate/floor req/s", "rps", "agentgate", "floor", {}),
    ("floor/nginx req/s", "rps", "floor", "nginx", {}),
]

INSTRUCTIONS_TARGET = 30000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("--instructions", metavar="FILE")
    args = parser.parse_args()
    runs = read_results(args.results)
    if not runs:
        sys.exit(f"proxy_table.py: no measurements in {args.results}")
    instructions = read_instructions(args.instructions) if args.instructions else None
    rows, met, total = table(runs, instructions)
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nissue 21 targets met in this run: {met} of {total}")


def read_results(path):
    """{(size, conns): {round: {proxy: {"rps", "p99"}}}}, cells in the order measured."""
    runs = collections.OrderedDict()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                rnd, size, conns, proxy, rps, _p50, p99 = fields
                cell = (size, int(conns))
                figures = {"rps": float(rps), "p99": float(p99)}
            except ValueError:
                sys.exit(f"proxy_table.py: {path}:{n}: not `round size conns proxy rps p50 p99`")
            runs.setdefault(cell, {}).setdefault(rnd, {})[proxy] = figures
    return runs


def read_instructions(path):
    """(agentgate, floor) instructions per proxied GET from proxy_instructions.sh's output."""
    with open(path) as f:
        m = re.search(r"^RESULT agentgate (\d+) floor (\d+)", f.read(), re.M)
    if not m:
        sys.exit(f"proxy_table.py: no RESULT line in {path}")
    return int(m.group(1)), int(m.group(2))


def table(runs, instructions):
    """The table's rows (lists of cells), and how many targets were met of how many."""
    cells = list(runs)
    proxies = [p for p in PROXIES if any(p in r for c in cells for r in runs[c].values())]
    rows = [["figure"] + [heading(c) for c in cells], ["---"] + ["---:"] * len(cells)]
    for proxy in proxies:
        row = [f"{proxy} req/s (p99)"]
        for cell in cells:
            rps = median(r[proxy]["rps"] for r in runs[cell].values() if proxy in r)
            p99 = median(r[proxy]["p99"] for r in runs[cell].values() if proxy in r)
            row.append("-" if rps is None else f"{rps:,.0f} ({duration(p99)})")
        rows.append(row)
    met = total = 0
    for label, figure, num, den, targets in RATIOS:
        if num not in proxies or den not in proxies:
            continue
        row = [label]
        for cell in cells:
            ratio = median(
                r[num][figure] / r[den][figure]
                for r in runs[cell].values()
                if num in r and den in r and r[den][figure] > 0
            )
            target = targets.get((size_class(cell[0]), cell[1]))
            if ratio is None:
                row.append("-")
            elif target is None:
                row.append(f"{ratio:.2f}×")
            else:
                ok = ratio >= target[1] if target[0] == ">=" else ratio <= target[1]
                met, total = met + ok, total + 1
                row.append(f"{ratio:.2f}× {verdict(ok)} ({sign(target[0])} {target[1]:.2f}×)")
        rows.append(row)
    if instructions is not None:
        agentgate, floor = instructions
        ok = agentgate <= INSTRUCTIONS_TARGET
        met, total = met + ok, total + 1
        rows.append(
            ["instructions per proxied GET"]
            + [f"{agentgate:,} {verdict(ok)} (≤ {INSTRUCTIONS_TARGET:,}); floor {floor:,}"]
            + [""] * (len(cells) - 1)
        )
    return rows, met, total


def heading(cell):
    size, conns = cell
    if size == "mock":
        what = "mock agent JSON"
    else:
        n = int(size)
        what = f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"
    return f"{what}, {conns} conn{'s' if conns != 1 else ''}"


def size_class(size):
    return "large" if size != "mock" and int(size) >= LARGE else "small"


def median(values):
    values = list(values)
    return statistics.median(values) if values else None


def duration(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def verdict(ok):
    return "met" if ok else "MISSED"


def sign(op):
    return "≥" if op == ">=" else "≤"


if __name__ == "__main__":
    main()
