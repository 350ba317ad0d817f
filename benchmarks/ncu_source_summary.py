#!/usr/bin/env python
"""Summarise the per-instruction stall samples of one kernel from Nsight Compute's source page.

    ncu --profile-from-start off --kernel-name regex:KERNEL --section SourceCounters --section WarpStateStats \\
        --page source --print-source sass --csv python3 SCRIPT > KERNEL.csv
    python benchmarks/ncu_source_summary.py KERNEL.csv [--top 25]

Prints the stall reasons over the whole kernel, then for its hottest loop (a loop body runs each of its instructions
equally often: of the groups of at least 16 instructions sharing an execution count, the one with the most samples)
the instruction count, its share of the samples and reasons, and its most-stalled instructions in program order.
Used in docs/performance.md (run 22).
"""

from __future__ import annotations

import argparse
import collections
import csv

SAMPLES = "Warp Stall Sampling (All Samples)"


def instructions(path: str) -> list[dict]:
    """The kernel's SASS rows (address, source, samples, stall columns), in program order."""
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]
    rows, header = [], None
    for r in csv.reader(lines):
        if r[0] == "Address":
            header = r
        elif header and len(r) == len(header) and r[0].startswith("0x"):
            rows.append(dict(zip(header, r)))
    return rows


def reasons_of(rows: list[dict]) -> collections.Counter:
    """Stall samples per reason (the issued and not-issued samples together)."""
    out = collections.Counter()
    for r in rows:
        for key, value in r.items():
            if key.startswith("stall_") and "Not Issued" not in key:
                out[key[len("stall_"):]] += int(value)
    return out


def shares(counter: collections.Counter, total: int, n: int = 8) -> str:
    return ", ".join(f"{k} {v / total:.1%}" for k, v in counter.most_common(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25, help="most-stalled loop instructions to list")
    args = ap.parse_args()
    rows = instructions(args.csv)
    total = sum(int(r[SAMPLES]) for r in rows)
    print(f"{len(rows)} instructions, {total} samples: {shares(reasons_of(rows), total)}")
    groups = collections.defaultdict(list)
    for r in rows:
        groups[int(r["Instructions Executed"])].append(r)
    body_count = max((c for c, g in groups.items() if c and len(g) >= 16),
                     key=lambda c: sum(int(r[SAMPLES]) for r in groups[c]))
    loop = [r for r in rows if int(r["Instructions Executed"]) == body_count]
    in_loop = sum(int(r[SAMPLES]) for r in loop)
    print(f"hottest loop: {len(loop)} instructions executed {body_count} times each, {in_loop / total:.1%} of the "
          f"samples: {shares(reasons_of(loop), in_loop)}")
    base = int(loop[0]["Address"], 16)
    top = sorted(loop, key=lambda r: -int(r[SAMPLES]))[: args.top]
    for r in sorted(top, key=lambda r: int(r["Address"], 16)):
        why = reasons_of([r]).most_common(2)
        print(f"  +{int(r['Address'], 16) - base:5x} {int(r[SAMPLES]) / in_loop:6.1%}  {r['Source'].strip()[:64]:64s} "
              + " ".join(f"{k}:{v}" for k, v in why if v))


if __name__ == "__main__":
    main()
