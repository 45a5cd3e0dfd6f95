"""The PyTorch peer on the shapes of the GPU sweep (issue 15): reference_moe.py's model and bench
(torch.compile, grouped GEMM), with its CONFIGS extended by the sweep's shapes. ../shared is
read-only, so the shapes live here and reference_moe.py is imported from where it is.

  python3 bench/reference_sweep.py --reference ../shared/bench/reference_moe.py bench NAME [--compile] [--steps 20]

NAME is one of reference_moe.py's CONFIGS or of SWEEP below; prints reference_moe.py's JSON line.
The same shapes for ours: bench/sweep/NAME.yaml (moe_bench --job).
"""
import argparse, importlib.util

# name -> the shape, in reference_moe.py's CONFIGS keys (its attention has H heads of d / H, no GQA).
SWEEP = {
    # 64 fine-grained experts top-2 (DeepSeek-like granularity), 16 layers of width 1024
    "fine64": dict(vocab=50304, d=1024, L=16, H=16, E=64, k=2, ffn=512, T=1024, B=16, dropout=0.0),
    # 4 large experts top-1 at GPT-2 small width (modded-nanogpt-like), batch 32
    "large4": dict(vocab=50304, d=768, L=12, H=12, E=4, k=1, ffn=2048, T=1024, B=32, dropout=0.0),
    # the same with head size 128 (6 heads of 128: Mixtral's, Llama's and Qwen's head size)
    "large4-hd128": dict(vocab=50304, d=768, L=12, H=6, E=4, k=1, ffn=2048, T=1024, B=32, dropout=0.0),
    # head size 256: 4 heads of 256 at width 1024
    "hd256": dict(vocab=50304, d=1024, L=8, H=4, E=8, k=2, ffn=1024, T=1024, B=16, dropout=0.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True, help="path to reference_moe.py")
    ap.add_argument("mode", choices=["bench"])
    ap.add_argument("config")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("reference_moe", a.reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    configs = dict(ref.CONFIGS, **SWEEP)
    if a.config not in configs:
        raise SystemExit(f"unknown config {a.config}; known: {', '.join(configs)}")
    ref.bench(configs[a.config], a.compile, a.steps)


if __name__ == "__main__":
    main()
