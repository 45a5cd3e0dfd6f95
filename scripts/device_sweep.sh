#!/usr/bin/env bash
# Runs on the lent GPU machine: the shape sweep of issue 15, ours against the PyTorch peer in
# the same call. For each shape (SWEEP, default every file of bench/sweep/): ours is
# `moe_bench --job bench/sweep/NAME.yaml` (moe-worker's own step, bf16, random tokens), the peer
# `bench/reference_sweep.py bench NAME --compile` (reference_moe.py's model and bench with the
# sweep's shapes). Prints a table last: tokens/s, MFU, peak memory, ours / peer.
# WORKER=1 also trains each shape through moe-worker itself (STEPS + 5 steps, a metric point a
# step, no checkpoint) and adds its median tokens/s after the first 5 steps and that over
# moe_bench's: the benchmark and the service's training must agree (issue 15: within 5%).
# WARMUP (default 5): moe_bench's warm-up steps before the measured ones.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
nvidia-smi -L || true
device_env_check_libs || exit 1
SWEEP=${SWEEP:-$(ls bench/sweep/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | tr '\n' ' ')}
for s in $SWEEP; do
  # The job file beside the original (its data path is relative to it): ../shared is not beside
  # the device's copy, its tinyshakespeare is the carry's (moe_bench --job checks the path too);
  # a metric point every step for moe-worker.
  job=bench/sweep/.$s.device.yaml
  sed -e 's/^train: {/train: {log_every: 1, /' -e 's|path: ../../../shared/|path: ../../.carry/shared/|' \
      "bench/sweep/$s.yaml" > "$job"
  timeout 240 .carry/bin/moe_bench --job "$job" --steps "${STEPS:-20}" --warmup "${WARMUP:-5}" \
      > "$OUT/sweep_ours_$s.json" 2> "$OUT/sweep_ours_$s.err"
  echo "ours $s rc=$?: $(tail -c 300 "$OUT/sweep_ours_$s.json")"
  if [[ -n ${WORKER:-} ]]; then
    timeout 300 .carry/bin/moe-worker --job "$job" --no-checkpoint --max-steps $(( ${STEPS:-20} + 5 )) \
        > "$OUT/sweep_worker_$s.log" 2>&1
    echo "worker $s rc=$?"
  fi
  rm -f "$job"
  [[ -n ${SKIP_PEER:-} ]] && continue
  timeout 300 python3 bench/reference_sweep.py --reference .carry/reference_moe.py bench "$s" --compile \
      > "$OUT/sweep_peer_$s.json" 2> "$OUT/sweep_peer_$s.err"
  echo "peer $s rc=$?: $(tail -c 300 "$OUT/sweep_peer_$s.json")"
done
python3 - "$OUT" $SWEEP <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except Exception:
        return None
def worker_tokens_per_s(name):
    # moe-worker's median tokens/s over its steps after the first 5 (its warm-up).
    try:
        points = [json.loads(l) for l in open(os.path.join(out, f"sweep_worker_{name}.log")) if l.startswith('{"step"')]
    except OSError:
        return None
    rates = sorted(p["tokens_per_s"] for p in points if p["step"] > 5)
    return rates[len(rates) // 2] if rates else None
def pick(d, *keys):
    for k in keys:
        if d is not None and k in d: return d[k]
    return None
worker = os.environ.get("WORKER", "") != ""
extra_head = " moe-worker tokens/s | moe-worker / ours |" if worker else ""
print("\n| shape | ours tokens/s | ours MFU | ours peak GB | peer tokens/s | peer peak GB | ours / peer | memory ours / peer |"
      + extra_head)
print("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if worker else ""))
for n in names:
    o, p = load(f"sweep_ours_{n}.json"), load(f"sweep_peer_{n}.json")
    ot = pick(o, "tokens_per_s"); pt = pick(p, "tokens_per_s")
    om = pick(o, "peak_memory_mb"); om = om / 1024 if om is not None else pick(o, "model_mem_gb")  # GiB, as the peer's
    pm = pick(p, "peak_mem_gb")
    mfu = pick(o, "mfu")
    f = lambda v, fmt: (fmt % v) if v is not None else "-"
    row = (f"| {n} | {f(ot, '%.0f')} | {f(100*mfu if mfu is not None else None, '%.1f%%')} | {f(om, '%.1f')} | "
           f"{f(pt, '%.0f')} | {f(pm, '%.1f')} | {f(ot/pt if ot and pt else None, '%.2f')} | {f(om/pm if om and pm else None, '%.2f')} |")
    if worker:
        wt = worker_tokens_per_s(n)
        row += f" {f(wt, '%.0f')} | {f(wt/ot if wt and ot else None, '%.3f')} |"
    print(row)
PY
