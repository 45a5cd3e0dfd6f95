#!/usr/bin/env bash
# A short device call (binaries from scripts/make_carry.sh in .carry/): the GPU tests named in
# TESTS one after another (their summary lines as they finish), then each job of RUNS
# ("name:file:steps", the KJV text and GPT-2's BPE carried) trained with its step's
# optimizer/step ms and tokens/s printed. For checking a kernel change when device time is short.
#   TESTS="cuda_muon_test" RUNS="small-muon:examples/small.yaml+muon:30" bash scripts/device_quick.sh
# A file followed by +muon trains with train.optimizer: muon.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
device_env_check_libs || exit 1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
for t in ${TESTS:-}; do
  timeout "${TEST_TIMEOUT:-120}" ".carry/bin/$t" --gtest_brief=1 2>&1 | grep -E "^\[  (PASSED|FAILED) |Failure|Which is|Expected" | head -12
  echo "$t rc=${PIPESTATUS[0]}"
done
K=$PWD/.carry/data/bible-kjv.txt BPE=$PWD/.carry/data/gpt2 J=/tmp/moe-quick
mkdir -p "$J"
for r in ${RUNS:-}; do
  IFS=: read -r name file steps <<< "$r"
  muon=""; [[ $file == *+muon ]] && muon=1 && file=${file%+muon}
  sed -e "s|path: ../data/bible-kjv.txt|path: $K|" -e "s|tokenizer_dir: ../data/gpt2.*|tokenizer_dir: $BPE|" \
      -e "s/^name: .*/name: $name/" "$file" > "$J/$name.yaml"
  [[ -n $muon ]] && sed -i "s/^train:$/train:\n  optimizer: muon/" "$J/$name.yaml"
  timeout "${RUN_TIMEOUT:-120}" .carry/bin/moe-worker --job "$J/$name.yaml" --max-steps "$steps" \
      --checkpoint-dir "$J/ck-$name" 2>&1 | grep '^{' | tail -1 |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$name', {k: d.get(k) for k in ('step','loss','tokens_per_s','step_ms','optimizer_ms','forward_ms','backward_ms','peak_memory_mb')})"
done
