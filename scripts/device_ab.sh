#!/usr/bin/env bash
# Runs on the lent GPU machine: two builds of moe_bench against each other in one call, so that a
# change is measured against the tree before it on the same GPU minutes apart (the peer and the
# GPU drift between calls by several percent). A is .carry/bin/moe_bench (this tree), B is
# .carry/base/moe_bench (another tree's, put there by hand after scripts/make_carry.sh). Each
# config runs ROUNDS times in the order A B A B ...; the table gives each side's best and median
# tokens/s and B / A.
#   AB_CONFIGS="small medium" ROUNDS=2 STEPS=10 bash scripts/device_ab.sh
#   AB_ENV="MOE_X=1" ...   an environment assignment for side A only (an experiment's switch)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
device_env_check_libs || exit 1
[[ -x .carry/base/moe_bench ]] || { echo "device_ab: no .carry/base/moe_bench"; exit 1; }
run() {  # side config round
  local bin=.carry/bin/moe_bench env=() what=(--config "$2")
  [[ $1 == B ]] && bin=.carry/base/moe_bench
  [[ $1 == A && -n ${AB_ENV:-} ]] && env=(env $AB_ENV)
  [[ $2 == *.yaml ]] && what=(--job "$2")
  local out=$OUT/ab_$1_$(basename "$2" .yaml)_$3
  timeout 240 "${env[@]}" "$bin" "${what[@]}" --steps "${STEPS:-10}" --warmup 3 > "$out.json" 2> "$out.err"
}
for c in ${AB_CONFIGS:-small medium}; do
  for r in $(seq 1 "${ROUNDS:-2}"); do run A "$c" "$r"; run B "$c" "$r"; done
done
python3 - "$OUT" ${AB_CONFIGS:-small medium} <<'PY'
import glob, json, os, statistics, sys
out, configs = sys.argv[1], sys.argv[2:]
def rates(side, c):
    v = []
    for f in glob.glob(os.path.join(out, f"ab_{side}_{os.path.basename(c).removesuffix('.yaml')}_*.json")):
        try:
            v.append(json.loads(open(f).read().strip().splitlines()[-1])["tokens_per_s"])
        except Exception:
            pass
    return v
print("| config | A tokens/s best / median | B tokens/s best / median | A / B (best) |")
print("| --- | --- | --- | --- |")
for c in configs:
    a, b = rates("A", c), rates("B", c)
    fmt = lambda v: f"{max(v):,.0f} / {statistics.median(v):,.0f}" if v else "-"
    ratio = f"{max(a) / max(b):.3f}" if a and b else "-"
    print(f"| {c} | {fmt(a)} | {fmt(b)} | {ratio} |")
PY
