#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv) per kernel name.

  ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
      moe_bench --config small --steps 1 --warmup 2 --profile > step.csv
  python3 bench/ncu_summary.py step.csv [--top 40]

Prints the total kernel time of the step, then the kernels by total time: ms, launches, name.
--by-kind adds issue 15's profile table: the kernel time by kind (products, attention, router,
permute, norms, activations, optimizer, loss and embedding, residual and dropout, casts, other
elementwise), and with
--step-ms (the step time measured without the profiler, moe_bench's step_ms) the idle rest.
"""
import argparse
import collections
import csv
import re
import sys

SCALE_TO_MS = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0,
               "second": 1e3, "s": 1e3}


# Kernel kinds by name, the first pattern that matches (our kernels in kernels/cuda, cuBLAS's and
# CUTLASS's GEMMs). Anything else is "other elementwise".
KINDS = [
    ("products", r"gemm|gemv|cutlass|nvjet|xmma|cublas|GroupedGemm|wgmma|splitKreduce"),
    ("attention", r"^(ForwardTc|ForwardKernel|DqTc|DkvTc|Dq|Dkv|AttentionDsum|DecodeAttention|Rope|Gate(Apply|Forward|Backward|ToBf16))"),
    ("router", r"^(Router|Plan(Slot|Rank)|SigmoidGate)"),
    ("permute", r"^(Permute|Unpermute|ToLayout|Gather(Bf16)?ToLayout|(Add|Sum)FromLayout|CopyRowBlocks|RowBlocksToFloat|AccumulateBf16)"),
    ("norms", r"^(RmsNorm|QkNorm)"),
    ("activations", r"^(Swiglu|Activation)"),
    ("optimizer", r"^(AdamW|Update|LoadStored|Load|Store|PartialSquares|Normalise|RoundToBf16)"),
    ("loss and embedding", r"^(CrossEntropy|Embedding)"),
    ("residual and dropout", r"^(Dropout|AddOut|AddInPlace)"),
    ("casts", r"^(CastTo|Bf16ToFloat)"),
]


def kind_of(name):
    # "void moe::<unnamed>::RmsNormBackwardVecKernel<6>(...)" -> "RmsNormBackwardVecKernel"
    base = name.strip()
    if base.startswith("void "):
        base = base[5:]
    base = base.replace("<unnamed>", "").replace("(anonymous namespace)", "")
    base = re.split(r"[<(]", base)[0].split("::")[-1].strip()
    for kind, pattern in KINDS:
        if re.search(pattern, base if kind != "products" else name, re.IGNORECASE if kind == "products" else 0):
            return kind
    return "other elementwise"


def by_kind(per_kernel, step_ms):
    """Markdown rows: kind, ms, share of the step (or of the kernel time without step_ms)."""
    total = sum(ms for _, ms in per_kernel.values())
    kinds = collections.defaultdict(lambda: [0, 0.0])
    for name, (n, ms) in per_kernel.items():
        k = kinds[kind_of(name)]
        k[0] += n
        k[1] += ms
    whole = step_ms if step_ms else total
    rows = ["| kind | ms | launches | share |", "| --- | --- | --- | --- |"]
    for kind, (n, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        rows.append(f"| {kind} | {ms:.2f} | {n} | {100 * ms / whole:.1f}% |")
    if step_ms:
        idle = step_ms - total
        rows.append(f"| idle (step {step_ms:.2f} ms - kernels {total:.2f} ms) | {idle:.2f} | - | {100 * idle / step_ms:.1f}% |")
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--by-kind", action="store_true", help="also the table of kernel time by kind")
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="the step time without the profiler: the idle row (with --by-kind)")
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
    if args.by_kind:
        if args.step_ms < 0:
            sys.exit(f"--step-ms: must be at least 0 (0 = no idle row), got {args.step_ms}")
        print()
        print("\n".join(by_kind(per_kernel, args.step_ms)))


if __name__ == "__main__":
    main()
