#!/usr/bin/env bash
# Runs on the lent GPU machine (binaries from scripts/make_carry.sh in .carry/): the checks of
# the recipe options, the interchange and the sampler (issues 16 and 18). Prints a table last.
# Steps (SKIP_TESTS=1, SKIP_PARITY=1, SKIP_HF=1, SKIP_QWEN3=1, SKIP_RECIPES=1, SKIP_MUON=1 leave
# one out; TESTS="cuda_model_test ..." runs only those GPU tests):
#   1. every carried GPU test (.carry/bin/cuda_*_test): each CUDA op and the whole model against
#      the CPU backend, the recipe options and the head sizes included
#   2. fp32 parity of the CPU worker with bench/reference_recipes.py (float64 PyTorch) with every
#      option on: two small jobs trained 3 steps, the same held-out batch scored by both
#   3. a QK-norm job trained (on QWEN3_DEVICE, default cuda), exported, loaded by transformers as
#      Qwen3-MoE, and the same shape without QK-norm trained on the GPU as Mixtral, fp32 and bf16
#      (bench/check_hf_export.py: logits and 50 greedy tokens); sampled with the KV cache
#   4. the seed recipes (examples/tutel-style.yaml, modded-nanogpt-style.yaml) and their base
#      twins (the same sizes, no options) RECIPE_STEPS steps (300) on the KJV text with GPT-2's
#      BPE: loss first and last, tokens/s, TFLOP/s, peak memory; RECIPE_BENCH=N also times each
#      against its twin with moe_bench --job, N rounds alternating
#   5. config small 30 steps with AdamW and with Muon (SKIP_MUON_RUN=1: AdamW only): the
#      optimizer's share of the step; that checkpoint through transformers (fp32); then 200
#      tokens sampled from it on the GPU with the KV cache (and 50 on the CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
W=$PWD/.carry/bin/moe-worker
nvidia-smi -L || true
device_env_check_libs || exit 1
declare -A R
TXT=$PWD/.carry/data/input.txt
KJV=$PWD/.carry/data/bible-kjv.txt
BPE=$PWD/.carry/data/gpt2
# "name: train N steps of FILE on DEVICE": the worker's JSON log lines go to $OUT/NAME.log.
train() {
  local name=$1 job=$2 steps=$3
  rm -rf "/tmp/ck-$name"
  timeout "${TRAIN_TIMEOUT:-300}" "$W" --job "$job" --max-steps "$steps" --checkpoint-dir "/tmp/ck-$name" \
      > "$OUT/$name.log" 2>&1
  echo "train $name rc=$?"
}

# 1. GPU tests.
if [[ -z ${SKIP_TESTS:-} ]]; then
  for t in .carry/bin/cuda_*_test; do
    n=$(basename "$t")
    [[ -n ${TESTS:-} && " $TESTS " != *" $n "* ]] && continue
    [[ $n == *_mpi_test ]] && continue
    timeout 300 "$t" --gtest_brief=1 > "$OUT/$n.log" 2>&1
    rc=$?
    grep -E "^\[ +(FAILED|SKIPPED) +\]|Failure|Expected|Which is" "$OUT/$n.log" | head -20
    R[$n]="rc=$rc, $(grep -E '^\[  PASSED  \]' "$OUT/$n.log" | head -1) $(grep -E '^\[  FAILED  \] [0-9]+' "$OUT/$n.log" | head -1)"
  done
fi

# 2. Recipe parity, CPU worker against float64 PyTorch.
if [[ -z ${SKIP_PARITY:-} ]]; then
  P=/tmp/moe-recipe-parity && rm -rf "$P" && mkdir -p "$P"
  cat > "$P/a.yaml" <<JOB
name: parity-a
model: {d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, seq_len: 32,
        attention: {qk_norm: true, gate: true, dropout: 0.1, rope_theta: 500000},
        moe: {num_experts: 4, top_k: 2, expert_hidden: 48, activation: relu2, shared_experts: 1,
              shared_expert_hidden: 32, router_score: sigmoid, router_temperature: 0.7,
              bias_update_rate: 0.01, expert_dropout: 0.2}}
data: {path: $TXT}
train: {steps: 3, batch_size: 8, eval_every: 3, eval_batches: 1, optimizer: muon, lr: 0.003, muon_lr: 0.02}
checkpoint: {every: 3}
JOB
  cat > "$P/b.yaml" <<JOB
name: parity-b
model: {d_model: 64, n_layers: 2, n_heads: 4, n_kv_heads: 1, seq_len: 32, tie_embeddings: false,
        attention: {qk_norm: true},
        moe: {num_experts: 8, top_k: 3, expert_hidden: 40, activation: gelu, capacity_factor: 1.0,
              router_temperature: 1.5, bias_update_rate: 0.05}}
data: {path: $TXT}
train: {steps: 3, batch_size: 8, eval_every: 3, eval_batches: 1}
checkpoint: {every: 3}
JOB
  for j in a b; do
    "$W" --job "$P/$j.yaml" --checkpoint-dir "$P/ck-$j" --threads 8 > "$P/train-$j.log" 2>&1 || tail -3 "$P/train-$j.log"
    "$W" --score "$P/ck-$j" --batch-out "$P/batch-$j.bin" > "$P/ours-$j.json"
    python3 bench/reference_recipes.py --checkpoint "$P/ck-$j" --batch "$P/batch-$j.bin" --ours "$P/ours-$j.json" \
        | tee "$OUT/recipe_parity_$j.json"
    R[recipe_parity_$j]="$(tail -1 "$OUT/recipe_parity_$j.json" 2>/dev/null || echo missing)"
  done
fi

# 3. Qwen3-MoE through transformers, and the GPU sampler.
if [[ -z ${SKIP_HF:-} ]]; then
  H=/tmp/moe-qwen3 && rm -rf "$H" && mkdir -p "$H"
  cat > "$H/q.yaml" <<JOB
name: qwen3
model: {d_model: 128, n_layers: 2, n_heads: 4, n_kv_heads: 2, seq_len: 128,
        attention: {qk_norm: true, rope_theta: 1000000}, moe: {num_experts: 4, top_k: 2, expert_hidden: 128}}
data: {path: $TXT}
train: {steps: 60, batch_size: 16, eval_every: 60, eval_batches: 2, precision: fp32}
resources: {device: cuda}
checkpoint: {every: 60}
JOB
  sed -i "s/device: cuda/device: ${QWEN3_DEVICE:-cuda}/" "$H/q.yaml"
  # The same shape without QK-norm: a Mixtral export.
  sed -e "s/name: qwen3/name: mixtral/" -e "s/qk_norm: true, //" -e "s/device: .*}/device: cuda}/" \
      "$H/q.yaml" > "$H/m.yaml"
  [[ -z ${SKIP_QWEN3:-} ]] && train qwen3 "$H/q.yaml" 60
  train mixtral "$H/m.yaml" 60
  hf_check() {  # NAME CHECKPOINT DTYPE
    timeout 240 python3 bench/check_hf_export.py --worker "$W" --checkpoint "$2" --work "$H/work-$1-$3" \
        --dtype "$3" 2> "$OUT/hf_$1_$3.err" | tee "$OUT/hf_$1_$3.json"
    R[hf_$1_$3]="$(tail -1 "$OUT/hf_$1_$3.json" 2>/dev/null) $(grep -E 'Error|error' "$OUT/hf_$1_$3.err" | tail -1)"
  }
  [[ -z ${SKIP_QWEN3:-} ]] && hf_check qwen3 /tmp/ck-qwen3 fp32
  hf_check mixtral /tmp/ck-mixtral fp32
  hf_check mixtral /tmp/ck-mixtral bf16
  "$W" --sample /tmp/ck-mixtral --prompt "ROMEO:" --tokens 200 --device cuda > "$OUT/sample.txt" 2> "$OUT/sample.err"
  R[sample]="$(tail -1 "$OUT/sample.err")"
fi

# 4. The seed recipes and their base twins.
if [[ -z ${SKIP_RECIPES:-} && -s $KJV ]]; then
  S=${RECIPE_STEPS:-300}
  K=/tmp/moe-recipes && rm -rf "$K" && mkdir -p "$K"
  for r in tutel-style modded-nanogpt-style; do
    sed -e "s|path: ../data/bible-kjv.txt|path: $KJV|" -e "s|tokenizer_dir: ../data/gpt2|tokenizer_dir: $BPE|" \
        "examples/$r.yaml" > "$K/$r.yaml"
    # The twin: the same sizes with every recipe option off.
    sed -e "/qk_norm: true/d" -e "/gate: true/d" -e "/activation: relu2/d" -e "/optimizer: muon/d" \
        -e "/muon_lr:/d" -e "s/schedule: wsd/schedule: cosine/" -e "s/^name: .*/name: $r-base/" \
        "$K/$r.yaml" > "$K/$r-base.yaml"
    grep -q "attention:$" "$K/$r-base.yaml" && sed -i "/^  attention:$/d" "$K/$r-base.yaml"
    if [[ $S -gt 0 ]]; then
      train "$r" "$K/$r.yaml" "$S"
      train "$r-base" "$K/$r-base.yaml" "$S"
    fi
  done
fi
# 4b. RECIPE_BENCH=N: each recipe against its twin through moe_bench --job (random tokens, 30
# steps after 5), N rounds alternating; one line per run. (Needs step 4's files: SKIP_RECIPES
# unset, RECIPE_STEPS=0 trains nothing.)
if [[ -n ${RECIPE_BENCH:-} && -d /tmp/moe-recipes ]]; then
  for ((i = 1; i <= RECIPE_BENCH; i++)); do
    for f in /tmp/moe-recipes/*.yaml; do
      echo "bench $(basename "$f" .yaml) round $i: $(timeout 120 .carry/bin/moe_bench --job "$f" --steps 30 --warmup 5 \
          2>> "$OUT/recipe_bench.err" | grep -oE '"(step_ms|tokens_per_s|forward_ms|backward_ms|peak_memory_mb)": [0-9.]+' |
          tr '\n' ' ')"
    done
  done | tee "$OUT/recipe_bench.txt"
fi

# 5. Muon's share of a step of config small.
if [[ -z ${SKIP_MUON:-} && -s $KJV ]]; then
  M=/tmp/moe-muon && rm -rf "$M" && mkdir -p "$M"
  sed -e "s|path: ../data/bible-kjv.txt|path: $KJV|" -e "s|tokenizer_dir: ../data/gpt2.*|tokenizer_dir: $BPE|" \
      -e "s/^name: .*/name: small-adamw/" examples/small.yaml > "$M/adamw.yaml"
  sed -e "s/^name: .*/name: small-muon/" -e "s/^train:$/train:\n  optimizer: muon/" "$M/adamw.yaml" > "$M/muon.yaml"
  train small-adamw "$M/adamw.yaml" 30
  [[ -z ${SKIP_MUON_RUN:-} ]] && train small-muon "$M/muon.yaml" 30
  # Config small through transformers (fp32), the same checkpoint.
  [[ -z ${SKIP_HF:-} ]] && hf_check small /tmp/ck-small-adamw fp32
  # The GPU sampler on config small (its 30-step checkpoint): tokens/s after the first token.
  "$W" --sample /tmp/ck-small-adamw --prompt "In the beginning" --tokens 200 --device cuda \
      > "$OUT/sample_small.txt" 2> "$OUT/sample_small.err"
  R[sample_small_gpu]="$(tail -1 "$OUT/sample_small.err")"
  "$W" --sample /tmp/ck-small-adamw --prompt "In the beginning" --tokens 50 --device cpu \
      > /dev/null 2> "$OUT/sample_small_cpu.err"
  R[sample_small_cpu]="$(tail -1 "$OUT/sample_small_cpu.err")"
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def steps(name):
    rows = []
    try:
        for line in open(os.path.join(out, name + ".log")):
            if line.startswith("{") and '"step"' in line:
                try: rows.append(json.loads(line))
                except ValueError: pass
    except OSError: pass
    return [r for r in rows if "loss" in r]
def get(r, *keys):
    for k in keys:
        if k in r: return r[k]
        if "times" in r and k in r["times"]: return r["times"][k]
    return None
print("\n| run | steps | loss first -> last | tokens/s (median of the last half) | MFU | optimizer ms / step ms | peak MB |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name in ("tutel-style", "tutel-style-base", "modded-nanogpt-style", "modded-nanogpt-style-base",
             "small-adamw", "small-muon", "qwen3", "mixtral"):
    rs = steps(name)
    if not rs: continue
    half = rs[len(rs) // 2:]
    tps = sorted(get(r, "tokens_per_s") or 0 for r in half)[len(half) // 2]
    mfu = sorted(get(r, "mfu") or 0 for r in half)[len(half) // 2]
    opt = sorted(get(r, "optimizer_ms") or 0 for r in half)[len(half) // 2]
    stp = sorted(get(r, "step_ms") or 0 for r in half)[len(half) // 2]
    mem = max(get(r, "peak_memory_mb") or 0 for r in rs)
    print(f"| {name} | {rs[-1].get('step')} | {rs[0]['loss']:.3f} -> {rs[-1]['loss']:.3f} | {tps:.0f} | {100*mfu:.1f}% | {opt:.1f} / {stp:.1f} | {mem:.0f} |")
PY
echo
echo "| check | result |"
echo "| --- | --- |"
for k in "${!R[@]}"; do echo "| $k | ${R[$k]} |"; done
