#!/usr/bin/env bash
# One short device call for a whole round (binaries from scripts/make_carry.sh in .carry/): every
# carried GPU test (two queues; correctness only), beside them the CPU parity and
# the Hugging Face checks of scripts/device_recipes.sh; then, with the GPU to itself, our tokens/s
# on a few shapes of the sweep (scripts/device_sweep.sh, SKIP_PEER unless PEER=1). Prints tables.
#   bash scripts/device_round.sh          (ROUND_SWEEP="small medium large4-hd128 hd256")
#   TESTS="cuda_model_test ..."  only these tests;  SKIP_PARITY=1  no CPU parity / HF checks;
#   SKIP_SWEEP=1  no sweep;  QUALITY=1  scripts/device_quality.sh beside the tests (its QUALITY_ONLY,
#   PARALLEL, DEADLINE), its table printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
device_env_check_libs || exit 1
# The GPU tests in two queues of eight threads each: all at once, their CPU oracles starved each
# other past any timeout on 16 cores (2026-12-03); one at a time, cuda_model_test takes ~30 s.
# A test that reads the GPU's free memory (cudaMemGetInfo) runs alone once the queues are done:
# beside the others it counts their allocations as its own (2026-12-04).
alone=(cuda_optimizer_state_test)
tests=()
later=()
for t in .carry/bin/cuda_*_test; do
  n=$(basename "$t")
  [[ $n == *_mpi_test ]] && continue
  [[ -n ${TESTS:-} && " $TESTS " != *" $n "* ]] && continue
  if [[ " ${alone[*]} " == *" $n "* ]]; then later+=("$t"); else tests+=("$t"); fi
done
run_queue() {
  local t n
  for t in "$@"; do
    n=$(basename "$t")
    OMP_NUM_THREADS=8 timeout "${TEST_TIMEOUT:-200}" "$t" --gtest_brief=1 > "$OUT/$n.log" 2>&1
    echo "rc=$?" >> "$OUT/$n.log"
  done
}
pids=()
run_queue "${tests[@]:0:$(( (${#tests[@]} + 1) / 2 ))}" &
pids+=($!)
run_queue "${tests[@]:$(( (${#tests[@]} + 1) / 2 ))}" &
pids+=($!)
if [[ -z ${SKIP_PARITY:-} ]]; then
  SKIP_TESTS=1 SKIP_RECIPES=1 SKIP_MUON=1 OUT=$OUT bash scripts/device_recipes.sh > "$OUT/recipes.txt" 2>&1 &
  pids+=($!)
fi
if [[ -n ${QUALITY:-} ]]; then
  OUT=$OUT bash scripts/device_quality.sh > "$OUT/quality-round.txt" 2>&1 &
  pids+=($!)
fi
wait "${pids[@]}"
run_queue "${later[@]}"
echo "| GPU test | result | failures |"
echo "| --- | --- | --- |"
for f in "$OUT"/cuda_*_test.log; do
  n=$(basename "$f" .log)
  fails=$(grep -E '^\[  FAILED  \] [A-Za-z]' "$f" | sed 's/\[  FAILED  \] //' | cut -c1-90 | sort -u | head -6 | tr '\n' ';')
  echo "| $n | $(tail -1 "$f") $(grep -E '^\[  PASSED  \]' "$f" | head -1) $(grep -E '^\[  FAILED  \] [0-9]+' "$f" | head -1) | $fails |"
done
for f in "$OUT"/cuda_*_test.log; do
  grep -B3 -A12 -m2 "Failure" "$f" | head -40
done
if [[ -z ${SKIP_PARITY:-} ]]; then
  echo
  sed -n '/^| check/,$p' "$OUT/recipes.txt"
  grep -E "rc=|Error" "$OUT/recipes.txt" | head -10
fi
if [[ -n ${QUALITY:-} ]]; then
  echo
  grep -E '^\{' "$OUT/quality-round.txt" | cut -c1-400
  sed -n '/^| variant/,$p' "$OUT/quality-round.txt"
fi
[[ -n ${SKIP_SWEEP:-} ]] && exit 0
skip_peer=1
[[ -n ${PEER:-} ]] && skip_peer=""
SWEEP=${ROUND_SWEEP:-small medium large4-hd128 hd256} STEPS=${STEPS:-10} SKIP_PEER=$skip_peer \
  OUT=$OUT bash scripts/device_sweep.sh 2>&1 | grep -v "^GPU "
