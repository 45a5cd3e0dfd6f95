#!/usr/bin/env bash
# Runs on the lent GPU machine (one H200), issue 17's memory measurements in one call (< 10 min):
#  1. examples/moe-80gb.yaml (9.3B parameters, micro-batches of 4 x 4096) trains 30 steps with
#     moe-worker on the carried Bible (GPT-2 BPE; random tokens through moe_bench when the data is
#     not carried), with the first option set our estimate says fits the GPU: the file as it is
#     (recompute full), + train.optimizer_state int8, + train.master_weights bf16 -- the last two
#     only once the cuda backend runs them (moectl validate refuses them otherwise); with none
#     fitting, the file as it is runs with resources.allow_oversubscribe_memory (it may fail).
#  2. bench/largest_model.py --train: the largest MoE our estimate fits per option combination,
#     each trained STEPS_LARGEST steps: measured peak memory and tokens/s next to the estimate.
#  3. An oversized job (allowed to oversubscribe) must end with the out-of-memory reason naming
#     GPU memory and the step (tests/out_of_memory_test.cc), not crash.
# SKIP_80GB=1 / SKIP_OVERSIZED=1 leave part 1 / part 3 out. Prints one table last.
# No checkpoint is kept: bench/largest_model.py stops each worker once it
# has logged its last step, before its final save finishes (10B parameters' fp32 state is larger
# than the disk).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
GPU=${GPU_MEMORY:-139GiB}
mkdir -p "$OUT"
nvidia-smi -L || true
device_env_check_libs || exit 1
M=.carry/bin/moectl W=.carry/bin/moe-worker B=.carry/bin/moe_bench
J=/tmp/moe-memory && rm -rf "$J" && mkdir -p "$J/examples"
ln -s "$PWD/.carry/data" "$J/data"
declare -A R

# 1. The 80 GB configuration: the first option set that fits $GPU by our estimate.
ex=$J/examples/moe-80gb.yaml
pick=""
T=(python3 bench/largest_model.py --moectl "$M" --worker "$W")
if [[ -z ${SKIP_80GB:-} ]]; then
for extra in "" "  optimizer_state: int8" "  optimizer_state: int8
  master_weights: bf16"; do
  if [[ -z $extra ]]; then cp examples/moe-80gb.yaml "$ex"
  else awk -v x="$extra" '{print} /^  recompute: full$/ {print x}' examples/moe-80gb.yaml > "$ex"; fi
  if "$M" validate "$ex" --gpu-memory "$GPU" > "$OUT/moe80_validate.txt" 2>&1; then pick="recompute${extra:+ +$(echo $extra | tr '\n' ' ')}"; break; fi
done
if [[ -z $pick ]]; then
  cp examples/moe-80gb.yaml "$ex"
  python3 - "$ex" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
s = s.replace("  launcher: local\n", "  launcher: local\n  allow_oversubscribe_memory: true\n", 1)
open(p, "w").write(s)
PY
  pick="recompute (does not fit $GPU by the estimate; oversubscribed)"
  "$M" validate "$ex" --gpu-memory "$GPU" > "$OUT/moe80_validate.txt" 2>&1
fi
echo "moe-80gb: $pick"; grep -E "parameters|memory/rank|gpu memory" "$OUT/moe80_validate.txt"
if [[ -f $J/data/bible-kjv.txt && -d $J/data/gpt2 ]]; then
  "${T[@]}" --train-job "$ex" --steps 30 --train-timeout "${TRAIN_TIMEOUT:-240}" --gpu-memory "$GPU" \
      > "$OUT/moe80.json" 2> "$OUT/moe80.err"
  echo "moe-80gb worker: $(tail -c 600 "$OUT/moe80.json")"
else
  timeout "${TRAIN_TIMEOUT:-240}" "$B" --job "$ex" --steps 30 --warmup 5 > "$OUT/moe80_bench.json" 2> "$OUT/moe80.err"
  echo "moe-80gb moe_bench rc=$? (random tokens; no data carried): $(tail -c 400 "$OUT/moe80_bench.json")"
fi
fi

# 2. The largest MoE per option combination, trained.
timeout "${LARGEST_TIMEOUT:-270}" python3 bench/largest_model.py --train --gpu-memory "$GPU" --dir "$J/largest" \
    --moectl "$M" --worker "$W" --data "$PWD/.carry/data/input.txt" --steps "${STEPS_LARGEST:-10}" --train-timeout "${LARGEST_TRAIN_TIMEOUT:-180}" \
    ${LARGEST_ARGS:-} | tee "$OUT/largest.txt"

# 3. Oversized: the largest default shape (its weights and optimizer fit) with 4 x the sequences
#    per micro-batch, allowed to oversubscribe: its activations must fail the first step with
#    "out of GPU memory: ... in step N".
big=$J/oversized.yaml
if [[ -z ${SKIP_OVERSIZED:-} ]]; then
python3 - "$J/largest/largest-defaults.yaml" "$big" <<'PY'
import re, sys
s = open(sys.argv[1]).read().replace("name: largest-defaults", "name: oversized")
s = re.sub(r"batch_size: (\d+)", lambda m: f"batch_size: {4 * int(m.group(1))}", s)
open(sys.argv[2], "w").write(s.replace("launcher: local}", "launcher: local, allow_oversubscribe_memory: true}"))
PY
"$M" validate "$big" --gpu-memory "$GPU" > "$OUT/oversized_validate.txt" 2>&1
echo "oversized validate rc=$?: $(grep -E 'parameters|does not fit' "$OUT/oversized_validate.txt" | tr -s ' ' | tr '\n' ' ')"
"${T[@]}" --train-job "$big" --steps 3 --train-timeout 90 --gpu-memory "$GPU" > "$OUT/oversized.json" 2>&1
echo "oversized: $(tail -c 600 "$OUT/oversized.json")"
fi

python3 - "$OUT" "$pick" <<'PY'
import json, os, sys
out, pick = sys.argv[1:3]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
f = lambda v, fmt: (fmt % v) if v is not None else "-"
print("\n| run | options | steps | loss first -> last | tokens/s | MFU | peak GiB | estimate GiB | estimate / peak | result |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
r = load("moe80.json")
if r is not None:
    loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-"
    res = "trained" if r.get("trained") else f"NOT trained (rc {r.get('train_rc')}): {r.get('failure', '')[:160]}"
    print(f"| moe-80gb | {pick} | {r.get('steps_logged', 0)} logged | {loss} | {f(r.get('tokens_per_s'), '%.0f')} | "
          f"{f(100 * r['mfu'] if r.get('mfu') else None, '%.1f%%')} | {f(r.get('peak_gib'), '%.1f')} | "
          f"{f(r.get('estimate_gib'), '%.1f')} | {f(r.get('estimate_over_peak'), '%.2f')} | {res} |")
b = load("moe80_bench.json")
if b is not None:
    print(f"| moe-80gb (moe_bench, random tokens) | {pick} | 30 | - -> {f(b.get('ce'), '%.3f')} | "
          f"{f(b.get('tokens_per_s'), '%.0f')} | {f(100 * b['mfu'] if b.get('mfu') else None, '%.1f%%')} | "
          f"{f(b['peak_memory_mb'] / 1024 if b.get('peak_memory_mb') else None, '%.1f')} | - | - | ran |")
o = load("oversized.json") or {}
oom = o.get("failure", "")
good = not o.get("trained") and "out of GPU memory" in oom and "in step" in oom
if o: print(f"| oversized (allow_oversubscribe_memory) | defaults, 4 x the micro-batch | {o.get('steps_logged', 0)} logged | - | - | - | - | "
      f"{f(o.get('estimate_gib'), '%.1f')} | - | {'failed as it should: ' if good else 'UNEXPECTED: '}{oom[:200]} |")
print("\nlargest per option combination (bench/largest_model.py --train):")
for line in open(os.path.join(out, "largest.txt"), errors="replace"):
    if line.startswith("|") or line.startswith("largest:"): print(line.rstrip())
PY
