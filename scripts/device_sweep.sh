#!/usr/bin/env bash
# Runs on the lent GPU machine: the shape sweep of issue 15, ours against the PyTorch peer in
# the same call. For each shape (SWEEP, default every file of bench/sweep/): ours is
# `moe_bench --job bench/sweep/NAME.yaml` (moe-worker's own step, bf16, random tokens), the peer
# `bench/reference_sweep.py bench NAME --compile` (reference_moe.py's model and bench with the
# sweep's shapes). Prints a table last: tokens/s, MFU, peak memory, ours / peer.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT"
nvidia-smi -L || true
device_env_check_libs || exit 1
SWEEP=${SWEEP:-$(ls bench/sweep/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | tr '\n' ' ')}
for s in $SWEEP; do
  timeout 240 .carry/bin/moe_bench --job "bench/sweep/$s.yaml" --steps "${STEPS:-20}" --warmup 5 \
      > "$OUT/sweep_ours_$s.json" 2> "$OUT/sweep_ours_$s.err"
  echo "ours $s rc=$?: $(tail -c 300 "$OUT/sweep_ours_$s.json")"
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
def pick(d, *keys):
    for k in keys:
        if d is not None and k in d: return d[k]
    return None
print("\n| shape | ours tokens/s | ours MFU | ours peak GB | peer tokens/s | peer peak GB | ours / peer | memory ours / peer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for n in names:
    o, p = load(f"sweep_ours_{n}.json"), load(f"sweep_peer_{n}.json")
    ot = pick(o, "tokens_per_s"); pt = pick(p, "tokens_per_s")
    om = pick(o, "peak_memory_mb"); om = om / 1024 if om is not None else pick(o, "model_mem_gb")  # GiB, as the peer's
    pm = pick(p, "peak_mem_gb")
    mfu = pick(o, "mfu")
    f = lambda v, fmt: (fmt % v) if v is not None else "-"
    print(f"| {n} | {f(ot, '%.0f')} | {f(100*mfu if mfu is not None else None, '%.1f%%')} | {f(om, '%.1f')} | "
          f"{f(pt, '%.0f')} | {f(pm, '%.1f')} | {f(ot/pt if ot and pt else None, '%.2f')} | {f(om/pm if om and pm else None, '%.2f')} |")
PY
