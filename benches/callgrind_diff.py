#!/usr/bin/env python3
"""Per-function instructions per request, from callgrind profiles taken at two request counts.

    benches/callgrind_diff.py N A_SMALL A_LARGE [B_SMALL B_LARGE] [--top K]

N is the difference between the two request counts (e.g. 4000 for 6000 - 2000). With one
pair it prints, for each function, its own instructions per request
((A_LARGE - A_SMALL) / N): set-up, warm-up and connecting cancel out. With two pairs it
prints B's figure minus A's: where B spends more per request than A. Largest first, then
the total.

The profiles come from `benches/proxy_instructions.sh` (with `KEEP=DIR`: `DIR/cg.agentgate.2000`
and so on) or from `benches/harness/src/bin/stack_profile.rs` under
`valgrind --tool=callgrind --separate-threads=yes` (the client thread's file ends in `-01`).
Needs `callgrind_annotate` (valgrind).
"""

import argparse
import collections
import re
import subprocess
import sys

LINE = re.compile(r"\s*([\d,]+) \([^)]*\)\s+(.*)$")


def self_costs(path):
    """Each function's own instruction count in one profile."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    costs = collections.Counter()
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r" \[.*\]$", "", m.group(2))
        name = re.sub(r"^.*/registry/src/[^/]+/", "", name)
        name = re.sub(r"^/rustc/[0-9a-f]+/library/", "std:", name)
        costs[name] += int(m.group(1).replace(",", ""))
    return costs


def per_request(small, large, n):
    a, b = self_costs(small), self_costs(large)
    return {k: (b[k] - a.get(k, 0)) / n for k in set(a) | set(b)}


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("n", type=int, help="difference between the two request counts")
    p.add_argument("profiles", nargs="+", help="A_SMALL A_LARGE [B_SMALL B_LARGE]")
    p.add_argument("--top", type=int, default=40, help="functions to print (40)")
    args = p.parse_args()
    if len(args.profiles) not in (2, 4):
        p.error("give two profiles (one variant) or four (two variants)")
    figures = per_request(args.profiles[0], args.profiles[1], args.n)
    if len(args.profiles) == 4:
        other = per_request(args.profiles[2], args.profiles[3], args.n)
        figures = {k: other.get(k, 0) - figures.get(k, 0) for k in set(figures) | set(other)}
    for name, v in sorted(figures.items(), key=lambda kv: -abs(kv[1]))[: args.top]:
        print(f"{v:10.1f}  {name}")
    print(f"{sum(figures.values()):10.1f}  total")


if __name__ == "__main__":
    sys.exit(main())
