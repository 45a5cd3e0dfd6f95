#!/usr/bin/env bash
# Runs on the lent GPU machine (see README "Numbers"): checks what needs PyTorch or a GPU, with
# binaries built on the build machine and carried in .carry/ (bin/, lib/ for the shared
# libraries the GPU image lacks, data/input.txt, reference_moe.py). Prints a short table last.
#   .carry is filled by: bash scripts/make_carry.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0
export LD_LIBRARY_PATH=$PWD/.carry/lib:${LD_LIBRARY_PATH:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
W=.carry/bin/moe-worker
nvidia-smi -L || true
if ldd "$W" | grep "not found"; then echo "device_check: missing shared libraries (above)"; exit 1; fi

# 1. fp32 parity with the PyTorch peer (issue: CPU training core): one training step of the
#    tiny config, then the same held-out batch scored by us and by reference_moe.py.
P=/tmp/moe-parity
rm -rf "$P" && mkdir -p "$P"
sed -e "s|path: .*input.txt|path: $PWD/.carry/data/input.txt|" -e "s|cache_dir: .*||" \
    examples/tiny-shakespeare.yaml > "$P/tiny.yaml"
"$W" --job "$P/tiny.yaml" --max-steps 1 --checkpoint-dir "$P/ck" --threads 16 2>&1 | tail -3
"$W" --score "$P/ck" --batch-out "$P/batch.bin" | tee "$P/ours.json"
python3 bench/check_reference_parity.py --checkpoint "$P/ck" --batch "$P/batch.bin" \
    --ours "$P/ours.json" --reference .carry/reference_moe.py | tee "$OUT/parity.json"
parity_rc=${PIPESTATUS[0]}

echo
echo "| check | result |"
echo "| --- | --- |"
echo "| reference parity (tiny, fp32) | $(cat "$OUT/parity.json" 2>/dev/null || echo missing) rc=$parity_rc |"
