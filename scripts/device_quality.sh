#!/usr/bin/env bash
# Runs on the lent GPU machine: the shakespeare_char quality result of issue 21 (docs/quality.md)
# through bench/quality_search.py: MODEL.md's tiny at <= 10.7M active parameters through moe-worker
# on one GPU, nanoGPT's split and val measurement. Prints one JSON line per run, the table last.
#   bash scripts/device_quality.sh            examples/shakespeare-moe.yaml ("example") and its dense
#                                             twin, seeds 1337 and 1338, all four at once (~3 minutes)
#   SEARCH=1 bash scripts/device_quality.sh   every variant on seed 1337, the best TOP (default 3)
#                                             and the dense twins on seed 1338 too (long: use DEADLINE)
#   QUALITY_ONLY=a,b  limits the variants;  PARALLEL=N runs N at once on the GPU (default 4);
#   DEADLINE=S starts no run after S seconds and stops the running ones then (their evaluations count).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
# Many small runs share the GPU: one host thread each (OpenMP would spin 16 per run).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=1
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
nvidia-smi -L || true
device_env_check_libs || exit 1
if [[ -n ${SEARCH:-} ]]; then
  only=${QUALITY_ONLY:-} top=${TOP:-3}
else
  only=${QUALITY_ONLY:-example,example-dense-twin} top=${TOP:-0}
fi
python3 bench/quality_search.py --worker .carry/bin/moe-worker --moectl .carry/bin/moectl \
    --data .carry/data/input.txt --out /tmp/moe-quality --seeds 1337,1338 --top "$top" \
    --parallel "${PARALLEL:-4}" --deadline "${DEADLINE:-0}" ${only:+--only "$only"} | tee "$OUT/quality.txt"
