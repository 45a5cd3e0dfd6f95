#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv) per kernel name.

  ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
      moe_bench --config small --steps 1 --warmup 2 --profile > step.csv
  python3 bench/ncu_summary.py step.csv [--top 40]

Prints the total kernel time of the step, then the kernels by total time: ms, launches, name.
"""
import argparse
import collections
import csv
import sys

SCALE_TO_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0,
               "second": 1e3, "s": 1e3}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with open(args.csv, newline="") as f:
        # ncu prints its own "==PROF==" lines and the program's stdout around the table.
        rows = [r for r in csv.reader(line for line in f if not line.startswith("=="))]
    header_at = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if header_at is None:
        sys.exit(f"{args.csv}: no 'Kernel Name' header: not an ncu --csv table")
    header = rows[header_at]
    name_col, value_col, unit_col = (header.index(c) for c in ("Kernel Name", "Metric Value", "Metric Unit"))
    per_kernel = collections.defaultdict(lambda: [0, 0.0])
    for r in rows[header_at + 1:]:
        if len(r) <= value_col or r[unit_col] not in SCALE_TO_MS:
            continue
        ms = float(r[value_col].replace(",", "")) * SCALE_TO_MS[r[unit_col]]
        entry = per_kernel[r[name_col].split("(")[0][:100]]
        entry[0] += 1
        entry[1] += ms
    total = sum(ms for _, ms in per_kernel.values())
    launches = sum(n for n, _ in per_kernel.values())
    print(f"kernel time {total:.2f} ms over {launches} launches")
    for name, (n, ms) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{ms:9.3f} ms {n:5d}  {name}")


if __name__ == "__main__":
    main()
