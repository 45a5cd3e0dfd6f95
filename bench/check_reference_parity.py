"""Numerics check against the PyTorch peer: load our checkpoint's model.safetensors into
reference_moe.py's MoEGPT (fp32, dropout off, TF32 off) and compare its CE on the batch that
`moe-worker --score` scored with ours. Prints one JSON line; exits 1 above the tolerance.

  python3 bench/check_reference_parity.py --checkpoint DIR --batch batch.bin --ours ours.json \
      --reference ../shared/bench/reference_moe.py [--config tiny] [--tolerance 1e-5]
"""
import argparse, glob, importlib.util, json, os, sys

import numpy as np
import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="a checkpoint dir, or a dir of step_* dirs")
    ap.add_argument("--batch", required=True, help="int32 inputs then targets, from moe-worker --score")
    ap.add_argument("--ours", required=True, help="moe-worker --score JSON output")
    ap.add_argument("--reference", required=True, help="path to reference_moe.py")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    a = ap.parse_args()

    spec = importlib.util.spec_from_file_location("reference_moe", a.reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    path = a.checkpoint
    steps = sorted(glob.glob(os.path.join(path, "step_*")))
    if steps:
        path = steps[-1]
    state = load_file(os.path.join(path, "model.safetensors"))
    c = dict(ref.CONFIGS[a.config], dropout=0.0)
    c["vocab"] = state["wte.weight"].shape[0]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = ref.MoEGPT(c).to(dev).float()
    model.load_state_dict(state, strict=True)
    model.eval()

    raw = np.fromfile(a.batch, dtype=np.int32)
    B, T = c["B"], c["T"]
    if raw.size != 2 * B * T:
        sys.exit(f"{a.batch}: expected {2 * B * T} int32 values for B={B}, T={T}, got {raw.size}")
    x = torch.from_numpy(raw[:B * T].reshape(B, T).astype(np.int64)).to(dev)
    y = torch.from_numpy(raw[B * T:].reshape(B, T).astype(np.int64)).to(dev)
    with torch.no_grad():
        ce, _ = model(x, y)
    ours = json.load(open(a.ours))["ce"]
    theirs = ce.item()
    rel = abs(ours - theirs) / abs(theirs)
    print(json.dumps(dict(check="reference_parity", config=a.config, device=dev, ours_ce=ours,
                          reference_ce=theirs, rel_error=rel, tolerance=a.tolerance,
                          ok=rel < a.tolerance)))
    sys.exit(0 if rel < a.tolerance else 1)


if __name__ == "__main__":
    main()
