"""PyTorch reference of MODEL.md *with* its recipe options ("Options: the seeds' recipes"), in
reference_moe.py's layout and state_dict names, for numerics checks of our checkpoints:

  python3 bench/reference_recipes.py --checkpoint DIR --batch batch.bin --ours ours.json [--tolerance 1e-5]

DIR is a checkpoint of ours (or a directory of step_* checkpoints: the newest); its spec.json
gives the shape and the options, model.safetensors the weights. batch.bin and ours.json come
from `moe-worker --score DIR --batch-out batch.bin > ours.json`. The model runs in fp32 with
dropout off (attention dropout and expert dropout are training-only), scores CE on that batch
and prints one JSON line; exit 1 when |ours - reference| / reference is above the tolerance.
Options covered: rope_theta, qk_norm, gate, GQA; activation swiglu | relu2 | gelu, shared
experts, router_score softmax | sigmoid, router_temperature, the router bias of loss-free
balancing (blocks.{i}.moe.router_bias when present), and capacity_factor with --with-capacity.
Without it the batch is scored dropless, as `moe-worker --score` scores it (sampling and scoring
are dropless since 868d353); the capacity drops are training's routing.
"""
import argparse, glob, json, math, os, sys

import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F


def load_file(path):
    """model.safetensors -> {name: tensor}: an 8-byte little-endian header size, a JSON header
    of {name: {dtype, shape, data_offsets}}, then the data (F32 here; BF16 / F16 widened)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little"); header = json.loads(f.read(n)); data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]; raw = data[lo:hi]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype={"F32": np.float32, "F16": np.float16, "F64": np.float64}[info["dtype"]])
        out[name] = torch.from_numpy(a.astype(np.float64).reshape(info["shape"]))
    return out

EPS = 1e-5


def get(d, *names, default=None):
    """A key of protobuf JSON under its proto name or its lowerCamelCase JSON name."""
    for n in names:
        for key in (n, n.split("_")[0] + "".join(w.title() for w in n.split("_")[1:])):
            if key in d:
                return d[key]
    return default


def config_from_spec(spec, state):
    m = spec["model"]; att = get(m, "attention", default={}) or {}; e = get(m, "moe", default={}) or {}
    H = int(get(m, "n_heads")); Hkv = int(get(m, "n_kv_heads", default=H) or H)
    E = int(get(e, "num_experts", default=1) or 1)
    act = str(get(e, "activation", default="ACTIVATION_SWIGLU")).replace("ACTIVATION_", "").lower()
    score = str(get(e, "router_score", default="SCORE_SOFTMAX")).replace("SCORE_", "").lower()
    return dict(
        vocab=state["wte.weight"].shape[0], d=int(get(m, "d_model")), L=int(get(m, "n_layers")), H=H, Hkv=Hkv,
        T=int(get(m, "seq_len")), tied="lm_head.weight" not in state,
        E=E, k=int(get(e, "top_k", default=1) or 1) if E > 1 else 1, ffn=int(get(e, "expert_hidden")),
        capacity=float(get(e, "capacity_factor", default=0) or 0),
        rope_theta=float(get(att, "rope_theta", default=10000) or 10000),
        qk_norm=bool(get(att, "qk_norm", default=False)), gate=bool(get(att, "gate", default=False)),
        activation=act if act in ("swiglu", "relu2", "gelu") else "swiglu",
        shared=int(get(e, "shared_experts", default=0) or 0),
        sigmoid=score == "sigmoid", tau=float(get(e, "router_temperature", default=1) or 1))


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x, T, theta):  # x (B, H, T, hd), half-split pairs
    hd = x.shape[-1]; h = hd // 2
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = f.cos().to(x), f.sin().to(x)
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)


def expert(z, w1, w3, w2, act):
    g = z @ w1
    if act == "swiglu": h = F.silu(g) * (z @ w3)
    elif act == "relu2": h = F.relu(g).pow(2)
    else: h = F.gelu(g, approximate="tanh")
    return h @ w2


def forward(c, s, idx, targets):
    B, T = idx.shape; D, H, Hkv = c["d"], c["H"], c["Hkv"]; hd = D // H
    x = s["wte.weight"][idx]
    for i in range(c["L"]):
        p = f"blocks.{i}."
        a = rms(x, s[p + "attn_norm.weight"])
        qkv = a @ s[p + "attn.wqkv.weight"].T
        q, k, v = qkv.split([H * hd, Hkv * hd, Hkv * hd], -1)
        q = q.view(B, T, H, hd).transpose(1, 2); k = k.view(B, T, Hkv, hd).transpose(1, 2)
        v = v.view(B, T, Hkv, hd).transpose(1, 2)
        if c["qk_norm"]:
            q = rms(q, s[p + "attn.q_norm.weight"]); k = rms(k, s[p + "attn.k_norm.weight"])
        q, k = rope(q, T, c["rope_theta"]), rope(k, T, c["rope_theta"])
        k = k.repeat_interleave(H // Hkv, 1); v = v.repeat_interleave(H // Hkv, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
        if c["gate"]:
            y = y * torch.sigmoid(a @ s[p + "attn.wg.weight"].T)
        x = x + y @ s[p + "attn.wo.weight"].T
        m = rms(x, s[p + "moe_norm.weight"]).reshape(-1, D)
        w3 = s.get(p + "moe.w3")
        if c["E"] == 1:
            out = expert(m, s[p + "moe.w1"][0], None if w3 is None else w3[0], s[p + "moe.w2"][0], c["activation"])
        else:
            logits = m @ s[p + "moe.router.weight"].T
            prob = torch.sigmoid(logits / c["tau"]) if c["sigmoid"] else (logits / c["tau"]).softmax(-1)
            bias = s.get(p + "moe.router_bias", torch.zeros(c["E"], dtype=prob.dtype))
            _, pick = (prob + bias).topk(c["k"], -1)
            w = prob.gather(-1, pick); w = w / w.sum(-1, keepdim=True)
            keep = torch.ones_like(w, dtype=torch.bool)
            if c["capacity"] > 0:  # first come by token order, each expert's own count
                cap = math.ceil(c["capacity"] * m.shape[0] * c["k"] / c["E"]); seen = [0] * c["E"]
                for t in range(m.shape[0]):
                    for j in range(c["k"]):
                        e = int(pick[t, j]); keep[t, j] = seen[e] < cap; seen[e] += 1
            out = torch.zeros_like(m)
            for e in range(c["E"]):
                t, j = ((pick == e) & keep).nonzero(as_tuple=True)
                if t.numel():
                    out.index_add_(0, t, w[t, j, None] * expert(m[t], s[p + "moe.w1"][e],
                                   None if w3 is None else w3[e], s[p + "moe.w2"][e], c["activation"]))
        for e in range(c["shared"]):
            sw3 = s.get(p + "moe.shared_w3")
            out = out + expert(m, s[p + "moe.shared_w1"][e], None if sw3 is None else sw3[e],
                               s[p + "moe.shared_w2"][e], c["activation"])
        x = x + out.view(B, T, D)
    head = s["wte.weight"] if c["tied"] else s["lm_head.weight"]
    logits = rms(x, s["final_norm.weight"]) @ head.T
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", required=True, help="int32 inputs then targets, from moe-worker --score")
    ap.add_argument("--ours", required=True, help="moe-worker --score JSON output")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--with-capacity", action="store_true",
                    help="drop assignments past the checkpoint's capacity_factor, as training does (moe-worker "
                         "--score is dropless: a job with a capacity scored 4.0285 there against 4.0383 here)")
    a = ap.parse_args()
    path = a.checkpoint
    steps = sorted(glob.glob(os.path.join(path, "step_*")))
    if steps: path = steps[-1]
    state = {k: v.double() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    spec = json.load(open(os.path.join(path, "spec.json")))
    c = config_from_spec(spec, state)
    if not a.with_capacity: c["capacity"] = 0
    raw = np.fromfile(a.batch, dtype=np.int32); T = c["T"]
    if raw.size % (2 * T): sys.exit(f"{a.batch}: {raw.size} int32 values is not inputs + targets of T={T}")
    B = raw.size // (2 * T)
    x = torch.from_numpy(raw[:B * T].reshape(B, T).astype(np.int64))
    y = torch.from_numpy(raw[B * T:].reshape(B, T).astype(np.int64))
    with torch.no_grad():
        theirs = forward(c, state, x, y).item()  # float64 throughout: the oracle's oracle
    ours = json.load(open(a.ours))["ce"]
    rel = abs(ours - theirs) / abs(theirs)
    opts = [k for k in ("qk_norm", "gate", "sigmoid") if c[k]] + ([c["activation"]] if c["activation"] != "swiglu" else [])
    opts += [f"shared={c['shared']}"] if c["shared"] else []
    print(json.dumps(dict(check="recipe_parity", options=opts, ours_ce=ours, reference_ce=theirs,
                          rel_error=rel, tolerance=a.tolerance, ok=rel < a.tolerance)))
    sys.exit(0 if rel < a.tolerance else 1)


if __name__ == "__main__":
    main()
