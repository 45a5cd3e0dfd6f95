#!/usr/bin/env bash
# Runs on the lent GPU machine (see README "Numbers"): checks what needs PyTorch or a GPU, with
# binaries built on the build machine and carried in .carry/ (bin/, lib/ for the shared
# libraries the GPU image lacks, data/input.txt, reference_moe.py). Prints a table last.
#   .carry is filled by: BUILD_DIR=build-cuda bash scripts/make_carry.sh
# Steps (each can be skipped: SKIP_PARITY=1, SKIP_TESTS=1, SKIP_BENCH=1; GTEST_REPEAT=N repeats the
# GPU tests; TRAIN_STEPS=N trains the tiny shakespeare job on the GPU for N steps of its
# 5000-step schedule, 0 = not at all):
#   1. fp32 parity of the CPU worker with reference_moe.py (one step of tiny, same batch scored)
#   2. the GPU tests (every CUDA op against its CPU twin; the whole model; the trainer)
#   3. ours (moe_bench, bf16) against the peer (reference_moe.py bench CONFIG --compile); with a
#      baseline moe_bench carried as .carry/baseline/moe_bench (an older tree's, for a change that
#      must not slow anything), it runs beside ours, alternating, BASELINE_ROUNDS times (default 2),
#      and the table adds ours / baseline (the best round of each)
#   4. tiny shakespeare on one GPU (device cuda, bf16), val loss reached
#   5. PROFILE="CONFIG|FILE.yaml ...": the kernels of one training step of each under Nsight Compute, summed
#      per kernel and by kind, with the idle rest of the step measured without the profiler
#      (bench/ncu_summary.py --by-kind --step-ms)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
W=.carry/bin/moe-worker
nvidia-smi -L || true
device_env_check_libs || exit 1
declare -A R

# 1. fp32 parity with the PyTorch peer (CPU worker).
if [[ -z ${SKIP_PARITY:-} ]]; then
  P=/tmp/moe-parity
  rm -rf "$P" && mkdir -p "$P"
  sed -e "s|path: .*input.txt|path: $PWD/.carry/data/input.txt|" -e "s|cache_dir: .*||" \
      examples/tiny-shakespeare.yaml > "$P/tiny.yaml"
  "$W" --job "$P/tiny.yaml" --max-steps 1 --checkpoint-dir "$P/ck" --threads 16 2>&1 | tail -3
  "$W" --score "$P/ck" --batch-out "$P/batch.bin" | tee "$P/ours.json"
  python3 bench/check_reference_parity.py --checkpoint "$P/ck" --batch "$P/batch.bin" \
      --ours "$P/ours.json" --reference .carry/reference_moe.py | tee "$OUT/parity.json"
  R[parity]="$(cat "$OUT/parity.json" 2>/dev/null || echo missing) rc=${PIPESTATUS[0]}"
fi

# 2. GPU tests.
if [[ -z ${SKIP_TESTS:-} ]]; then
  for t in cuda_ops_test cuda_moe_ops_test cuda_model_test; do
    [[ -x .carry/bin/$t ]] || { R[$t]="not carried"; continue; }
    timeout 300 ".carry/bin/$t" --gtest_brief=1 ${GTEST_REPEAT:+--gtest_repeat=$GTEST_REPEAT} > "$OUT/$t.log" 2>&1
    rc=$?
    grep -E "^\[ +(PASSED|FAILED|SKIPPED) +\]|Failure|loss cpu|Expected|Which is|error" "$OUT/$t.log" | head -40
    R[$t]="rc=$rc, $(grep -E '^\[  PASSED  \]' "$OUT/$t.log" | head -1) $(grep -E '^\[  FAILED  \] [0-9]+' "$OUT/$t.log" | head -1)"
  done
fi

# 3. Ours against the peer, in this same call.
BENCH_CONFIGS=${BENCH_CONFIGS:-tiny small medium}
PEER_CONFIGS=${PEER_CONFIGS-tiny small}
if [[ -z ${SKIP_BENCH:-} ]]; then
  for c in $BENCH_CONFIGS; do
    if [[ -x .carry/baseline/moe_bench ]]; then
      # Ours and the baseline alternating; ours_$c.json is our best round.
      for ((i = 1; i <= ${BASELINE_ROUNDS:-2}; i++)); do
        for who in base ours; do
          b=.carry/bin/moe_bench; [[ $who == base ]] && b=.carry/baseline/moe_bench
          timeout 240 "$b" --config "$c" --steps "${BENCH_STEPS:-20}" --precision bf16 \
              >> "$OUT/round_${who}_$c.json" 2>> "$OUT/round_${who}_$c.err"
          echo "$who $c round $i rc=$?: $(tail -1 "$OUT/round_${who}_$c.json" | grep -oE '"(tokens_per_s|step_ms|model_mem_gb|mfu)": [0-9.]+' | tr '\n' ' ')"
        done
      done
      python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(json.dumps(max(r, key=lambda x: x['tokens_per_s'])))" \
          "$OUT/round_ours_$c.json" > "$OUT/ours_$c.json"
      continue
    fi
    timeout 240 .carry/bin/moe_bench --config "$c" --steps "${BENCH_STEPS:-20}" --precision bf16 \
        > "$OUT/ours_$c.json" 2> "$OUT/ours_$c.err"
    echo "ours $c rc=$?: $(cat "$OUT/ours_$c.json")"; tail -3 "$OUT/ours_$c.err"
  done
  for c in $PEER_CONFIGS; do
    timeout 300 python3 .carry/reference_moe.py bench "$c" --compile > "$OUT/peer_$c.json" 2> "$OUT/peer_$c.err"
    echo "peer $c rc=$?: $(tail -1 "$OUT/peer_$c.json")"; tail -2 "$OUT/peer_$c.err"
  done
fi

# 4. tiny shakespeare on one GPU.
if [[ ${TRAIN_STEPS:-0} -gt 0 ]]; then
  Q=/tmp/moe-tiny-gpu
  rm -rf "$Q" && mkdir -p "$Q"
  sed -e "s|path: .*input.txt|path: $PWD/.carry/data/input.txt|" -e "s|cache_dir: .*||" \
      -e "s|device: cpu|device: cuda|" -e "s|precision: fp32|precision: bf16|" \
      -e "s|every: 1000|every: 100000|" examples/tiny-shakespeare.yaml > "$Q/tiny.yaml"
  start=$(date +%s)
  timeout "${TRAIN_TIMEOUT:-400}" "$W" --job "$Q/tiny.yaml" --max-steps "$TRAIN_STEPS" --checkpoint-dir "$Q/ck" \
      > "$OUT/train_tiny.log" 2>&1
  rc=$?
  grep val_loss "$OUT/train_tiny.log" | tail -4
  R[train]="rc=$rc, $(( $(date +%s) - start )) s, last: $(grep val_loss "$OUT/train_tiny.log" | tail -1 | grep -oE '"step": [0-9]+|"val_loss": [0-9.]+' | tr '\n' ' ')"
fi

# 5. Where one step's GPU time goes.
# PROFILE is a config name (tiny, small, medium) or job files (FILE.yaml ..., moe_bench --job).
for prof in ${PROFILE:-}; do
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  what=(--config "$prof") tag=$prof
  [[ $prof == *.yaml ]] && what=(--job "$prof") tag=$(basename "$prof" .yaml)
  timeout 300 "$NCU" --clock-control none --cache-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
      .carry/bin/moe_bench "${what[@]}" --steps 1 --warmup 2 --profile > "$OUT/ncu_$tag.csv" 2> "$OUT/ncu_$tag.err"
  echo "ncu $tag rc=$?"; tail -3 "$OUT/ncu_$tag.err"
  # The same step without the profiler: its median step time gives the table's idle row.
  step_ms=$(.carry/bin/moe_bench "${what[@]}" --steps 10 --warmup 3 2>/dev/null |
            grep -oE '"step_ms": [0-9.]+' | tail -1 | grep -oE '[0-9.]+$')
  python3 bench/ncu_summary.py "$OUT/ncu_$tag.csv" --top "${PROFILE_TOP:-45}" --by-kind --step-ms "${step_ms:-0}" |
      tee "$OUT/ncu_$tag.txt"
  gzip -f "$OUT/ncu_$tag.csv"
done

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except Exception:
        return None
print("\n| config | ours tokens/s | ours TFLOP/s (MFU) | fwd / bwd / opt ms | ours mem GB | peer tokens/s | peer TFLOP/s | ours / peer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for c in ("tiny", "small", "medium"):
    o, p = load(f"ours_{c}.json"), load(f"peer_{c}.json")
    if o is None and p is None: continue
    ot = f"{o['tokens_per_s']:.0f}" if o else "-"
    of = f"{o['model_tflops']:.1f} ({100*o['mfu']:.1f}%)" if o else "-"
    split = f"{o['forward_ms']:.1f} / {o['backward_ms']:.1f} / {o['optimizer_ms']:.1f}" if o else "-"
    mem = f"{o['model_mem_gb']:.1f}" if o else "-"
    pt = f"{p['tokens_per_s']}" if p else "-"
    pf = f"{p['model_tflops']}" if p else "-"
    ratio = f"{o['tokens_per_s']/p['tokens_per_s']:.2f}" if o and p else "-"
    print(f"| {c} | {ot} | {of} | {split} | {mem} | {pt} | {pf} | {ratio} |")
if any(os.path.exists(os.path.join(out, f"round_base_{c}.json")) for c in ("tiny", "small", "medium")):
    def best(name):
        try:
            return max(json.loads(l)["tokens_per_s"] for l in open(os.path.join(out, name)) if l.strip())
        except Exception:
            return None
    print("\n| config | ours tokens/s (best round) | baseline tokens/s (best round) | ours / baseline |")
    print("| --- | --- | --- | --- |")
    for c in ("tiny", "small", "medium"):
        o, b = best(f"round_ours_{c}.json"), best(f"round_base_{c}.json")
        if o is None or b is None: continue
        print(f"| {c} | {o:.0f} | {b:.0f} | {o/b:.3f} |")
PY
echo
echo "| check | result |"
echo "| --- | --- |"
for k in "${!R[@]}"; do echo "| $k | ${R[$k]} |"; done
