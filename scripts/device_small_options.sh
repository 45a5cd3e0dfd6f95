#!/usr/bin/env bash
# Runs on the lent GPU machine (binaries and data from scripts/make_carry.sh in .carry/): issue 17's
# measurements on config small (examples/small.yaml: the KJV text, GPT-2's BPE, bf16, one GPU).
#  1. train.recompute none against full, RECOMPUTE_STEPS (40) steps each with the GPU to itself:
#     median step time of the last half and peak memory.
#  2. the same job STATE_STEPS (2000) steps four times at once, same seed and batches: the default
#     (fp32 master weights and optimizer state), optimizer_state bf16, optimizer_state int8, and
#     master_weights bf16: train loss (mean of the last 100 logged steps) and val loss at the last
#     evaluation all four reached, each against the default's. STATE_TIMEOUT (540 s) stops them;
#     a stopped run is compared at the last step all of them logged.
#   SKIP_RECOMPUTE=1 / SKIP_STATE=1 leave a part out; STATE_RUNS="fp32 bf16" runs only those of the
#   four (fp32 bf16 int8 master: 2000 steps of all four at once need about 600 s of an H200, so two
#   calls of two each fit the 10-minute limit; the table reads the logs in OUT and in the
#   directories of STATE_LOGS="DIR ..." (an earlier call's fetched files: SKIP_STATE=1
#   SKIP_RECOMPUTE=1 STATE_LOGS=... prints the table of two calls). Prints a table last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
W=$PWD/.carry/bin/moe-worker
KJV=$PWD/.carry/data/bible-kjv.txt
BPE=$PWD/.carry/data/gpt2
device_env_check_libs || exit 1
[[ -s $KJV && -s $BPE/encoder.json ]] || { echo "no KJV / GPT-2 BPE carried (scripts/fetch_data.sh)"; exit 1; }
S=/tmp/moe-small-options && rm -rf "$S" && mkdir -p "$S"
# job NAME STEPS [train line ...]: examples/small.yaml with the carried data, NAME, STEPS (a quarter of
# them warm-up when under 800) and the lines added under train:.
job() {
  local name=$1 steps=$2; shift 2
  local extra="" warm=$(( steps < 800 ? steps / 4 : 200 ))
  for l in "$@"; do extra+="\\n  $l"; done
  sed -e "s|path: ../data/bible-kjv.txt|path: $KJV|" -e "s|tokenizer_dir: ../data/gpt2.*|tokenizer_dir: $BPE|" \
      -e "s/^name: .*/name: $name/" -e "s/^  steps: .*/  steps: $steps/" \
      -e "s/^  warmup_steps: .*/  warmup_steps: $warm/" -e "s/^train:$/train:$extra/" \
      examples/small.yaml > "$S/$name.yaml"
}
train() {  # NAME TIMEOUT
  OMP_NUM_THREADS=${THREADS:-4} timeout "$2" "$W" --job "$S/$1.yaml" --checkpoint-dir "$S/ck-$1" \
      > "$OUT/$1.log" 2>&1
  echo "train $1 rc=$?"
}

if [[ -z ${SKIP_RECOMPUTE:-} ]]; then
  R=${RECOMPUTE_STEPS:-40}
  job small-recompute-none "$R" "log_every: 1"
  job small-recompute-full "$R" "log_every: 1" "recompute: full"
  THREADS=16 train small-recompute-none 240
  THREADS=16 train small-recompute-full 240
fi

if [[ -z ${SKIP_STATE:-} ]]; then
  N=${STATE_STEPS:-2000}
  job small-state-fp32 "$N"
  job small-state-bf16 "$N" "optimizer_state: bf16"
  job small-state-int8 "$N" "optimizer_state: int8"
  job small-master-bf16 "$N" "master_weights: bf16"
  declare -A RUN_OF=([fp32]=small-state-fp32 [bf16]=small-state-bf16 [int8]=small-state-int8
                      [master]=small-master-bf16)
  for r in ${STATE_RUNS:-fp32 bf16 int8 master}; do
    [[ -n ${RUN_OF[$r]:-} ]] || { echo "STATE_RUNS: no run '$r' (fp32 bf16 int8 master)"; exit 1; }
    train "${RUN_OF[$r]}" "${STATE_TIMEOUT:-540}" &
  done
  wait
fi
rm -rf "$S"/ck-*  # a few GB each

python3 - "$OUT" ${STATE_LOGS:-} <<'PY'
import json, os, sys
def rows(name):  # the first directory given that holds NAME.log
    rs = []
    for out in sys.argv[1:]:
        try:
            for line in open(os.path.join(out, name + ".log"), errors="replace"):
                if line.startswith("{") and '"step"' in line:
                    try: rs.append(json.loads(line))
                    except ValueError: pass
            return rs
        except OSError: pass
    return rs
def t(r, k):
    return r.get(k, r.get("times", {}).get(k))
med = lambda xs: sorted(xs)[len(xs) // 2] if xs else None
print("\n| recompute | steps | step ms (median, last half) | tokens/s | peak MB |")
print("| --- | --- | --- | --- | --- |")
ms = {}
for mode in ("none", "full"):
    rs = [r for r in rows(f"small-recompute-{mode}") if "loss" in r]
    if not rs: print(f"| {mode} | 0 | - | - | - |"); continue
    half = rs[len(rs) // 2:]
    ms[mode] = med([t(r, "step_ms") or 0 for r in half])
    print(f"| {mode} | {rs[-1]['step']} | {ms[mode]:.1f} | {med([t(r, 'tokens_per_s') or 0 for r in half]):.0f} | "
          f"{max(t(r, 'peak_memory_mb') or 0 for r in rs):.0f} |")
if len(ms) == 2 and ms["none"]:
    print(f"\nrecompute full / none step time: {ms['full'] / ms['none']:.3f}")
# The runs that left a log, the default first (two calls' logs: STATE_LOGS="dir ..." adds directories).
names = [n for n in ["small-state-fp32", "small-state-bf16", "small-state-int8", "small-master-bf16"] if rows(n)]
train = {n: {r["step"]: r["loss"] for r in rows(n) if "loss" in r} for n in names}
val = {n: {r["step"]: r["val_loss"] for r in rows(n) if r.get("val_loss") is not None} for n in names}
if not any(train.values()): sys.exit(0)
common = set.intersection(*(set(train[n]) for n in names)) if all(train.values()) else set()
vcommon = set.intersection(*(set(val[n]) for n in names)) if all(val.values()) else set()
last = sorted(common)[-100:]
vs = max(vcommon) if vcommon else None
span = lambda ss: f"{ss[0]}-{ss[-1]}" if ss else "-"
print(f"\n| run | steps logged | train loss, mean of steps {span(last)} | vs {names[0]} | mean of steps {span(last[-10:])} | "
      f"vs {names[0]} | val loss at step {vs} | vs {names[0]} | peak MB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
base_t = sum(train[names[0]][s] for s in last) / len(last) if last else None
base_10 = sum(train[names[0]][s] for s in last[-10:]) / len(last[-10:]) if last else None
base_v = val[names[0]].get(vs) if vs else None
for n in names:
    rs = rows(n)
    mt = sum(train[n][s] for s in last) / len(last) if last else None
    m10 = sum(train[n][s] for s in last[-10:]) / len(last[-10:]) if last else None
    v = val[n].get(vs) if vs else None
    rel = lambda a, b: f"{100 * (a - b) / b:+.2f}%" if a is not None and b else "-"
    print(f"| {n} | {max(train[n]) if train[n] else 0} | {mt if mt is None else round(mt, 4)} | {rel(mt, base_t)} | "
          f"{m10 if m10 is None else round(m10, 4)} | {rel(m10, base_10)} | "
          f"{v if v is None else round(v, 4)} | {rel(v, base_v)} | "
          f"{max((t(r, 'peak_memory_mb') or 0) for r in rs) if rs else 0:.0f} |")
PY
