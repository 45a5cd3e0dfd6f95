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
# Prints one table last. No checkpoints are written (the worker's final save goes to /dev/null
# and fails; the steps are logged before it).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
GPU=${GPU_MEMORY:-139GiB}
mkdir -p "$OUT"
nvidia-smi -L || true
device_env_check_libs || exit 1
M=.carry/bin/moectl W=.carry/bin/moe-worker B=.carry/bin/moe_bench
NOCK=/dev/null/no-checkpoint
J=/tmp/moe-memory && rm -rf "$J" && mkdir -p "$J/examples"
ln -s "$PWD/.carry/data" "$J/data"
declare -A R

# 1. The 80 GB configuration: the first option set that fits $GPU by our estimate.
ex=$J/examples/moe-80gb.yaml
pick=""
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
  timeout "${TRAIN_TIMEOUT:-240}" "$W" --job "$ex" --max-steps 30 --checkpoint-dir "$NOCK" > "$OUT/moe80.log" 2>&1
  echo "moe-80gb worker rc=$? (the final save under /dev/null fails by design)"
else
  timeout "${TRAIN_TIMEOUT:-240}" "$B" --job "$ex" --steps 30 --warmup 5 > "$OUT/moe80.log" 2> "$OUT/moe80.err"
  echo "moe-80gb moe_bench rc=$? (random tokens; no data carried)"
fi
tail -3 "$OUT/moe80.log"

# 2. The largest MoE per option combination, trained.
timeout "${LARGEST_TIMEOUT:-270}" python3 bench/largest_model.py --train --gpu-memory "$GPU" --dir "$J/largest" \
    --moectl "$M" --worker "$W" --steps "${STEPS_LARGEST:-10}" --train-timeout "${LARGEST_TRAIN_TIMEOUT:-120}" \
    ${LARGEST_ARGS:-} | tee "$OUT/largest.txt"

# 3. Oversized: the largest default shape (its weights and optimizer fit) with 4 x the sequences
#    per micro-batch, allowed to oversubscribe: its activations must fail the first step with
#    "out of GPU memory: ... in step N".
big=$J/oversized.yaml
python3 - "$J/largest/largest-defaults.yaml" "$big" <<'PY'
import re, sys
s = open(sys.argv[1]).read().replace("name: largest-defaults", "name: oversized")
s = re.sub(r"batch_size: (\d+)", lambda m: f"batch_size: {4 * int(m.group(1))}", s)
open(sys.argv[2], "w").write(s.replace("launcher: local}", "launcher: local, allow_oversubscribe_memory: true}"))
PY
"$M" validate "$big" --gpu-memory "$GPU" > "$OUT/oversized_validate.txt" 2>&1
echo "oversized validate rc=$?: $(grep -E 'parameters|does not fit' "$OUT/oversized_validate.txt" | tr -s ' ' | tr '\n' ' ')"
timeout 60 "$W" --job "$big" --max-steps 3 --checkpoint-dir "$NOCK" > "$OUT/oversized.log" 2>&1
orc=$?
oom=$(grep -o "out of GPU memory[^\"]*" "$OUT/oversized.log" | tail -1)
echo "oversized worker rc=$orc: ${oom:-no out-of-memory reason}"

python3 - "$OUT" "$pick" "$orc" "$oom" <<'PY'
import json, sys
out, pick, orc, oom = sys.argv[1:5]
rows = []
for line in open(f"{out}/moe80.log", errors="replace"):
    if line.startswith("{"):
        try: rows.append(json.loads(line))
        except ValueError: pass
steps = [r for r in rows if "loss" in r and "step" in r]
bench = [r for r in rows if "tokens_per_s" in r and "step" not in r]
est = "-"
for line in open(f"{out}/moe80_validate.txt", errors="replace"):
    if "memory/rank" in line and "total " in line: est = line.split("total ")[1].split(" (")[0]
print("\n| run | options | steps | loss first -> last | tokens/s | MFU | peak GiB | estimate | result |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
if steps:
    half = steps[len(steps) // 2:]
    med = lambda k: sorted(r.get(k) or 0 for r in half)[len(half) // 2]
    peak = max(r.get("peak_memory_mb") or 0 for r in steps) / 1024
    ok = steps[-1].get("step") == 30 and steps[-1]["loss"] < steps[0]["loss"]
    print(f"| moe-80gb | {pick} | {steps[-1].get('step')} | {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f} | "
          f"{med('tokens_per_s'):.0f} | {100 * med('mfu'):.1f}% | {peak:.1f} | {est} | {'trained' if ok else 'NOT trained'} |")
elif bench:
    b = bench[-1]
    print(f"| moe-80gb (moe_bench) | {pick} | 30 | - -> {b.get('ce', float('nan')):.3f} | {b.get('tokens_per_s', 0):.0f} | "
          f"{100 * (b.get('mfu') or 0):.1f}% | {(b.get('peak_memory_mb') or 0) / 1024:.1f} | {est} | ran |")
else:
    fail = [l.strip() for l in open(f"{out}/moe80.log", errors="replace") if "out of" in l or "rror" in l]
    print(f"| moe-80gb | {pick} | 0 | - | - | - | - | {est} | {(fail[-1][:160] if fail else 'no step logged')} |")
good = orc != "0" and oom.startswith("out of GPU memory") and "in step" in oom
print(f"| oversized (allow_oversubscribe_memory) | defaults | - | - | - | - | - | - | "
      f"{'failed as it should: ' if good else 'UNEXPECTED (rc ' + orc + '): '}{oom[:160]} |")
print("\nlargest per option combination (bench/largest_model.py --train):")
for line in open(f"{out}/largest.txt", errors="replace"):
    if line.startswith("|") or line.startswith("largest:"): print(line.rstrip())
PY
