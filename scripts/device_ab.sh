#!/usr/bin/env bash
# Runs on the lent GPU machine: builds of moe_bench against each other in one call, so that a
# change is measured against the tree before it on the same GPU minutes apart (the peer and the
# GPU drift between calls by several percent). The sides:
#   A      .carry/bin/moe_bench (this tree)
#   B      .carry/base/moe_bench (another tree's, put there by hand after scripts/make_carry.sh)
#   NAME   .carry/variants/NAME/moe_bench for each folder there (more builds, by hand too; packed
#          as .carry/variants.tar.xz they are unpacked first)
#   NAME   A with an environment assignment, from AB_ENVS="NAME=VAR=VALUE ..." (an experiment's
#          switch); AB_ENV="VAR=VALUE" alone applies to A itself, as before
# Each config (a name of moe_bench --config, or a job .yaml) runs ROUNDS times, the sides in turn
# (A B ... A B ...). The table gives each side's best and median tokens/s, its step split, the
# host's wait and plans (moe_bench's counts_wait_ms, plans_per_step, plan_queries_per_step), the
# rows the experts' layout pads (layout_padding), and best / A's best.
#   AB_CONFIGS="small medium" ROUNDS=2 STEPS=10 [WARMUP=3] bash scripts/device_ab.sh
#   AB_ENVS="sync=MOE_OPT_OVERLAP=0" AB_CONFIGS=small bash scripts/device_ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
device_env_check_libs || exit 1
if [[ -f .carry/variants.tar.xz && ! -d .carry/variants ]]; then
  tar -C .carry -xJf .carry/variants.tar.xz  # holds variants/NAME/moe_bench
fi
declare -A bin env
sides=(A)
bin[A]=.carry/bin/moe_bench
env[A]=${AB_ENV:-}
if [[ -x .carry/base/moe_bench ]]; then sides+=(B); bin[B]=.carry/base/moe_bench; env[B]=""; fi
for d in .carry/variants/*/; do
  [[ -x $d/moe_bench ]] || continue
  n=$(basename "$d"); sides+=("$n"); bin[$n]=$d/moe_bench; env[$n]=""
done
for spec in ${AB_ENVS:-}; do
  n=${spec%%=*}
  if [[ $n == "$spec" || -z $n || -n ${bin[$n]:-} ]]; then
    echo "device_ab: AB_ENVS entry '$spec': want NAME=VAR=VALUE with a new NAME"; exit 2
  fi
  sides+=("$n"); bin[$n]=.carry/bin/moe_bench; env[$n]=${spec#*=}
done
if (( ${#sides[@]} < 2 )); then
  echo "device_ab: only A to run: put another build in .carry/base/ or .carry/variants/NAME/, or give AB_ENVS"
  exit 1
fi
echo "device_ab: sides ${sides[*]}"
run() {  # side config round
  local what=(--config "$2") e=()
  [[ $2 == *.yaml ]] && what=(--job "$2")
  [[ -n ${env[$1]} ]] && e=(env ${env[$1]})
  local out=$OUT/ab_$1_$(basename "$2" .yaml)_$3
  timeout 240 "${e[@]}" "${bin[$1]}" "${what[@]}" --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" > "$out.json" 2> "$out.err"
}
for c in ${AB_CONFIGS:-small medium}; do
  for r in $(seq 1 "${ROUNDS:-2}"); do
    for s in "${sides[@]}"; do run "$s" "$c" "$r"; done
  done
done
python3 - "$OUT" "${sides[*]}" ${AB_CONFIGS:-small medium} <<'PY'
import glob, json, os, statistics, sys
out, sides, configs = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def runs(side, c):
    v = []
    for f in glob.glob(os.path.join(out, f"ab_{side}_{os.path.basename(c).removesuffix('.yaml')}_*.json")):
        try:
            v.append(json.loads(open(f).read().strip().splitlines()[-1]))
        except Exception:
            pass
    return v
print("| config | side | tokens/s best / median | fwd / bwd / opt ms | counts wait ms | plans a step | layout padding | best / A's best |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for c in configs:
    a = [d["tokens_per_s"] for d in runs("A", c)]
    for s in sides:
        v = runs(s, c)
        if not v:
            print(f"| {c} | {s} | - | - | - | - | - | - |")
            continue
        best = max(v, key=lambda d: d["tokens_per_s"])
        rates = [d["tokens_per_s"] for d in v]
        ratio = f"{best['tokens_per_s'] / max(a):.3f}" if a else "-"
        print(f"| {c} | {s} | {best['tokens_per_s']:,.0f} / {statistics.median(rates):,.0f} | "
              f"{best.get('forward_ms', 0):.2f} / {best.get('backward_ms', 0):.2f} / {best.get('optimizer_ms', 0):.2f} | "
              f"{best.get('counts_wait_ms', float('nan')):.2f} | {best.get('plans_per_step', float('nan')):.1f}"
              f" ({best.get('plan_queries_per_step', float('nan')):.1f} queried) | "
              f"{best.get('layout_padding', float('nan')):.3f} | {ratio} |")
PY
