#!/usr/bin/env bash
# Runs on a lent multi-GPU machine (H200 x2 / x4 / x8): expert parallelism over NCCL, with the
# binaries built here and carried in .carry/ (BUILD_DIR=build-cuda bash scripts/make_carry.sh).
# Prints a table last. Steps (SKIP_TESTS=1, SKIP_BENCH=1, SKIP_SERVICE=1 skip them):
#   1. the NCCL exchange on known inputs (comm_nccl_mpi_test) on 2 and on every GPU
#   2. the same bf16 job on 1, 2 and 4 GPUs gives one loss curve (cuda_equivalence_mpi_test)
#   3. config small on 1 GPU and on every GPU (8 experts), tokens/s per GPU; the dispatcher's
#      all-to-all (a2a_bench, and inside moe_bench) against NCCL's own (nccl_ceiling.py), in
#      this same call
#   3b. with 8 GPUs or more, the 18B-class seed model 20 steps (examples/seed-18b.yaml)
#   4. the service: moed + moectl on this machine, a job on every GPU, cancel (device_service.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-multi-gpu}
mkdir -p "$OUT"
G=$(nvidia-smi -L | wc -l)
nvidia-smi -L
device_env_check_libs || exit 1
declare -A R

run_np() {  # run_np NP NAME CMD...: one mpirun, its log in $OUT/NAME.log, its status in R[NAME]
  local np=$1 name=$2
  shift 2
  timeout "${STEP_TIMEOUT:-300}" "${MPIRUN[@]}" -np "$np" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "^\[ +(PASSED|FAILED|SKIPPED) +\]|Failure|GPUs \]|rank .*GPU|error" "$OUT/$name.log" | head -20
  R[$name]="rc=$rc $(grep -E '^\[  PASSED  \]|^\[  FAILED  \] [0-9]+|^\[  SKIPPED \] [0-9]+' "$OUT/$name.log" | sort -u | tr '\n' ' ')"
}

if [[ -z ${SKIP_TESTS:-} ]]; then
  run_np 2 nccl_np2 .carry/bin/comm_nccl_mpi_test --gtest_brief=1
  [[ $G -gt 2 ]] && run_np "$G" "nccl_np$G" .carry/bin/comm_nccl_mpi_test --gtest_brief=1
  for np in 1 2 4; do
    [[ $np -le $G ]] && run_np "$np" "equivalence_np$np" .carry/bin/cuda_equivalence_mpi_test --gtest_brief=1
  done
fi

if [[ -z ${SKIP_BENCH:-} ]]; then
  for np in 1 "$G"; do
    timeout 300 "${MPIRUN[@]}" -np "$np" .carry/bin/moe_bench --config small --steps "${BENCH_STEPS:-20}" \
        --precision bf16 > "$OUT/small_np$np.json" 2> "$OUT/small_np$np.err"
    echo "ours small on $np GPU(s) rc=$?: $(tail -1 "$OUT/small_np$np.json")"; tail -3 "$OUT/small_np$np.err"
  done
  timeout 300 "${MPIRUN[@]}" -np "$G" .carry/bin/a2a_bench > "$OUT/a2a.json" 2> "$OUT/a2a.err"
  echo "a2a_bench rc=$?"; cat "$OUT/a2a.json"; tail -3 "$OUT/a2a.err"
  timeout 300 torchrun --standalone --nproc_per_node="$G" .carry/nccl_ceiling.py > "$OUT/ceiling.json" \
      2> "$OUT/ceiling.err"
  echo "nccl_ceiling rc=$?: $(tail -1 "$OUT/ceiling.json")"; tail -3 "$OUT/ceiling.err"
fi

# 3b. On 8 GPUs or more: the 18B-class seed model (examples/seed-18b.yaml: d_model 4096, 32 layers,
# 8 experts top-2, head size 128, bf16), one expert per GPU, 20 steps on the KJV text, no
# checkpoint (it would be ~200 GB); SKIP_18B=1 leaves it out.
if [[ -z ${SKIP_18B:-} && $G -ge 8 ]]; then
  sed -e "s|path: ../data/bible-kjv.txt|path: $PWD/.carry/data/bible-kjv.txt|" \
      -e "s|tokenizer_dir: ../data/gpt2|tokenizer_dir: $PWD/.carry/data/gpt2|" examples/seed-18b.yaml > /tmp/seed-18b.yaml
  timeout "${SEED18B_TIMEOUT:-580}" "${MPIRUN[@]}" -np 8 .carry/bin/moe-worker --job /tmp/seed-18b.yaml --max-steps 20 \
      --no-checkpoint > "$OUT/seed18b.log" 2>&1
  R[seed18b]="rc=$? $(grep -E '^\{.*"step": (1|10|20),' "$OUT/seed18b.log" |
                      grep -oE '"(step|loss|tokens_per_s|mfu|peak_memory_mb)": [0-9.]+' | tr '\n' ' ')"
  tail -3 "$OUT/seed18b.log"
fi

if [[ -z ${SKIP_SERVICE:-} && -f scripts/device_service.sh ]]; then
  OUT=$OUT/service RANKS=$G timeout 400 bash scripts/device_service.sh > "$OUT/service.log" 2>&1
  R[service]="rc=$? $(grep -E '^(PASS|FAIL)' "$OUT/service.log" | tr '\n' ';')"
  tail -30 "$OUT/service.log"
fi

python3 - "$OUT" "$G" <<'PY'
import json, os, sys
out, g = sys.argv[1], int(sys.argv[2])
def last_json(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except Exception:
        return None
one, many = last_json("small_np1.json"), last_json(f"small_np{g}.json")
if one and many:
    print(f"\n| config small | GPUs | tokens/s | tokens/s per GPU | per GPU vs 1 GPU | all-to-all ms/step | all-reduce ms/step | exchange busbw GB/s (MB per call) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in (one, many):
        print(f"| small | {r['ranks']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s_per_gpu']:.0f} | "
              f"{r['tokens_per_s_per_gpu'] / one['tokens_per_s_per_gpu']:.2f} | {r['all_to_all_ms']:.1f} | "
              f"{r['all_reduce_ms']:.1f} | {r['a2a_busbw_gbps']:.0f} ({r['a2a_mb_per_call']:.0f}) |")
ours = {}
try:
    for line in open(os.path.join(out, "a2a.json")):
        r = json.loads(line)
        if r.get("bench") == "a2a":
            ours[round(r["bytes"] / 2**20)] = r
except Exception:
    pass
ceiling = last_json("ceiling.json")
if ours or ceiling:
    peer = {row["MB"]: row for row in (ceiling or {}).get("rows", [])}
    print(f"\n| all-to-all on {g} GPUs | MB | ours busbw GB/s | NCCL (torch) busbw GB/s | ours / NCCL |")
    print("| --- | --- | --- | --- | --- |")
    for mb in sorted(set(ours) | set(peer)):
        o, p = ours.get(mb), peer.get(mb)
        ratio = f"{o['busbw_gbps'] / p['a2a_busbw']:.2f}" if o and p and p["a2a_busbw"] else "-"
        print(f"| | {mb} | {o['busbw_gbps']:.0f} | {p['a2a_busbw'] if p else '-'} | {ratio} |" if o else
              f"| | {mb} | - | {p['a2a_busbw']} | - |")
PY
echo
echo "| check | result |"
echo "| --- | --- |"
for k in "${!R[@]}"; do echo "| $k | ${R[$k]} |"; done
