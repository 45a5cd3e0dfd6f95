#!/usr/bin/env bash
# Runs on the lent GPU machine: training on shapes the sweep does not have (bench/shapes/*.yaml:
# head sizes 8 to 256, grouped- and multi-query attention, 512 experts top-8, shared experts,
# capacity drops, relu2 and gelu experts), three steps each on the CPU (fp32, the oracle) and on
# the GPU in fp32 and in bf16 through moe-worker, from the same seed and batches. Prints a table:
# the largest relative difference from the CPU's loss and grad norm over the steps. fp32 must
# agree to 1e-5 (loss) and 1e-4 (grad norm); bf16's first step to 1e-3 (later steps drift further
# where a rounding flips a token's route). Exits 1 when a run fails or fp32 disagrees.
#   bash scripts/device_shapes.sh            SHAPES="hd80-gqa e512-top8" for some of them
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUT=${OUT:-/tmp/moe-device}
mkdir -p "$OUT/shapes"
rm -f "$OUT/shapes/rc.txt"
device_env_check_libs || exit 1
SHAPES=${SHAPES:-$(ls bench/shapes/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | tr '\n' ' ')}
for s in $SHAPES; do
  for side in cpu-fp32 cuda-fp32 cuda-bf16; do
    dev=${side%-*} prec=${side#*-}
    # The job file beside the originals, so that its data path (relative to it) still holds.
    job=bench/shapes/.$s.$side.yaml
    sed -e "s/device: cpu/device: $dev/" -e "s/precision: fp32/precision: $prec/" "bench/shapes/$s.yaml" > "$job"
    OMP_NUM_THREADS=8 timeout 300 .carry/bin/moe-worker --job "$job" --no-checkpoint --max-steps 3 \
        > "$OUT/shapes/$s.$side.out" 2>&1
    echo "$s $side rc=$?" >> "$OUT/shapes/rc.txt"
    rm -f "$job"
  done
done
python3 - "$OUT/shapes" $SHAPES <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
rcs = dict((" ".join(l.split()[:2]), l.split()[2]) for l in open(os.path.join(out, "rc.txt")))
def points(name, side):
    try:
        return [json.loads(l) for l in open(os.path.join(out, f"{name}.{side}.out")) if l.startswith('{"step"')]
    except OSError:
        return []
def rel(a, b, key, steps=None):
    pairs = list(zip(a, b))[:steps]
    return max(abs(x[key] - y[key]) / max(abs(x[key]), 1e-12) for x, y in pairs) if pairs else None
bad = 0
print("| shape | CPU loss, steps 1-3 | GPU fp32: loss / grad norm rel. diff | GPU bf16: step 1 loss / all steps loss / grad norm | ok |")
print("| --- | --- | --- | --- | --- |")
for n in names:
    cpu, f32, b16 = points(n, "cpu-fp32"), points(n, "cuda-fp32"), points(n, "cuda-bf16")
    fails = [s for s in ("cpu-fp32", "cuda-fp32", "cuda-bf16") if rcs.get(f"{n} {s}") != "rc=0"]
    full = len(cpu) == 3 and len(f32) == 3 and len(b16) == 3
    fl, fg = rel(cpu, f32, "loss"), rel(cpu, f32, "grad_norm")
    b1, bl, bg = rel(cpu, b16, "loss", 1), rel(cpu, b16, "loss"), rel(cpu, b16, "grad_norm")
    ok = not fails and full and fl <= 1e-5 and fg <= 1e-4 and b1 <= 1e-3
    bad += not ok
    f = lambda v: "-" if v is None else "%.1e" % v
    print(f"| {n} | {' '.join('%.4f' % p['loss'] for p in cpu)} | {f(fl)} / {f(fg)} | {f(b1)} / {f(bl)} / {f(bg)} | "
          f"{'yes' if ok else 'NO ' + ' '.join(fails)} |")
sys.exit(1 if bad else 0)
PY
