"""The shakespeare_char quality search (issue 21): trains variants of MODEL.md's "tiny" job on one
GPU through moe-worker and reports each one's best validation loss, nanoGPT's way: the first
90% of the characters train, the last 10% validate, val loss is the mean CE over 200 random
batches of 64 x 256 of the held-out part, evaluated every 250 steps; best val is the minimum.

  python3 bench/quality_search.py --worker .carry/bin/moe-worker --moectl .carry/bin/moectl \
      --data input.txt --out DIR [--only NAME,NAME] [--seeds 1337,1338] [--parallel 3]

Every line printed is JSON (one per run), then a Markdown table: variant, active parameters (as
`moectl validate` counts them), best val per seed, their mean, the step of the best, seconds.
A variant is a set of overrides of the base job below (dotted keys); its job file is written
as JSON (valid YAML) to DIR/NAME-SEED.yaml so any run can be repeated by hand.
"""
import argparse, concurrent.futures as cf, copy, json, os, re, subprocess, sys, time

BASE = {
    "name": "shakespeare-moe",
    "model": {"d_model": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6, "seq_len": 256,
              "vocab_size": 65, "tie_embeddings": True, "dropout": 0.2,
              "moe": {"num_experts": 8, "top_k": 2, "expert_hidden": 512, "capacity_factor": 0,
                      "aux_loss_coef": 0.01, "z_loss_coef": 0.001}},
    "data": {"path": "", "tokenizer": "char", "val_fraction": 0.1},
    "train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
              "weight_decay": 0.1, "grad_clip": 1.0, "precision": "bf16", "eval_every": 250,
              "eval_batches": 200, "log_every": 250},
    "resources": {"ranks": 1, "device": "cuda"},
    "checkpoint": {"every": 100000, "keep": 1},
}

EXAMPLE = {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2, "train.lr": 1.5e-3,
           "train.steps": 1500, "train.log_every": 50}

# name -> overrides. Active parameters stay at or under the base's 10.67M (10.7M as counted):
# k * F * 3 (or 2 for relu2 / gelu) + shared experts is held at 3072 per layer and token.
VARIANTS = {
    "base": {},
    "dense-twin": {"model.moe.num_experts": 1, "model.moe.top_k": 1, "model.moe.expert_hidden": 1024},
    # nanoGPT's dropout 0.2 also drops attention probabilities (attn_dropout); ours did not
    "attn0.2": {"model.attention.dropout": 0.2},
    "dense-twin-attn0.2": {"model.moe.num_experts": 1, "model.moe.top_k": 1, "model.moe.expert_hidden": 1024,
                           "model.attention.dropout": 0.2},
    "attn0.2-s2500": {"model.attention.dropout": 0.2, "train.steps": 2500},
    "attn0.1-s2000": {"model.attention.dropout": 0.1, "train.steps": 2000},
    "attn0.2-drop0.3-s3000": {"model.attention.dropout": 0.2, "model.dropout": 0.3, "train.steps": 3000},
    "attn0.2-expdrop0.2-s3000": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                                 "train.steps": 3000},
    "attn0.2-e16k4-s3000": {"model.attention.dropout": 0.2, "model.moe.num_experts": 16, "model.moe.top_k": 4,
                            "model.moe.expert_hidden": 256, "train.steps": 3000},
    "attn0.2-qknorm-gate-s3000": {"model.attention.dropout": 0.2, "model.attention.qk_norm": True,
                                  "model.attention.gate": True, "model.moe.expert_hidden": 448, "train.steps": 3000},
    "attn0.2-shared1-k1-s3000": {"model.attention.dropout": 0.2, "model.moe.top_k": 1,
                                 "model.moe.shared_experts": 1, "model.moe.shared_expert_hidden": 512,
                                 "train.steps": 3000},
    "attn0.2-muon-s2500": {"model.attention.dropout": 0.2, "train.optimizer": "muon", "train.muon_lr": 0.02,
                           "train.steps": 2500},
    "attn0.2-wd0.3-s3000": {"model.attention.dropout": 0.2, "train.weight_decay": 0.3, "train.steps": 3000},
    "attn0.2-drop0.25-wd0.2-s3000": {"model.attention.dropout": 0.2, "model.dropout": 0.25,
                                     "train.weight_decay": 0.2, "train.steps": 3000},
    "attn0.2-e16k4-expdrop0.1-s3000": {"model.attention.dropout": 0.2, "model.moe.num_experts": 16,
                                       "model.moe.top_k": 4, "model.moe.expert_hidden": 256,
                                       "model.moe.expert_dropout": 0.1, "train.steps": 3000},
    # Round 2: every run above peaked at steps 750-1250 with the learning rate still high, then
    # overfit; so shorter runs whose cosine ends where overfitting starts, with expert dropout.
    "a2-s1250": {"model.attention.dropout": 0.2, "train.steps": 1250},
    "a2-ed0.2-s1250": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2, "train.steps": 1250},
    "a2-ed0.2-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2, "train.steps": 1500},
    "a2-ed0.3-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.3, "train.steps": 1500},
    "a2-ed0.2-wd0.3-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                             "train.weight_decay": 0.3, "train.steps": 1500},
    "a2-ed0.2-drop0.25-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                                "model.dropout": 0.25, "train.steps": 1500},
    "a2-ed0.2-e16k4-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                             "model.moe.num_experts": 16, "model.moe.top_k": 4, "model.moe.expert_hidden": 256,
                             "train.steps": 1500},
    "a2-ed0.2-muon-s1250": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                            "train.optimizer": "muon", "train.muon_lr": 0.02, "train.steps": 1250},
    "dense-twin-a2-s1250": {"model.moe.num_experts": 1, "model.moe.top_k": 1, "model.moe.expert_hidden": 1024,
                            "model.attention.dropout": 0.2, "train.steps": 1250},
    "dense-twin-a2-s1500": {"model.moe.num_experts": 1, "model.moe.top_k": 1, "model.moe.expert_hidden": 1024,
                            "model.attention.dropout": 0.2, "train.steps": 1500},
    # Round 3: around a2-ed0.2-s1500 (1.4611 / 1.4555), the best of round 2.
    "a3-ed0.2-s1750": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2, "train.steps": 1750},
    "a3-ed0.25-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.25, "train.steps": 1500},
    "a3-ed0.2-minlr3e-5-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                                 "train.min_lr": 3e-5, "train.steps": 1500},
    "a3-attn0.25-ed0.2-s1500": {"model.attention.dropout": 0.25, "model.moe.expert_dropout": 0.2,
                                "train.steps": 1500},
    "a3-ed0.2-e16k4-s1750": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                             "model.moe.num_experts": 16, "model.moe.top_k": 4, "model.moe.expert_hidden": 256,
                             "train.steps": 1750},
    "a3-ed0.2-lr1.5e-3-s1500": {"model.attention.dropout": 0.2, "model.moe.expert_dropout": 0.2,
                                "train.lr": 1.5e-3, "train.min_lr": 1e-4, "train.steps": 1500},
    # Round 4: the two changes of round 3 that each helped (lr 1.5e-3; min_lr 3e-5) together, a
    # higher peak, a shorter cosine, and wsd (the rate held, then a linear decay over the last half).
    "a4-lr1.5e-3-minlr3e-5-s1500": dict(EXAMPLE, **{"train.min_lr": 3e-5}),
    "a4-lr2e-3-minlr3e-5-s1500": dict(EXAMPLE, **{"train.lr": 2e-3, "train.min_lr": 3e-5}),
    "a4-lr1.5e-3-minlr3e-5-s1250": dict(EXAMPLE, **{"train.min_lr": 3e-5, "train.steps": 1250}),
    "a4-lr1.5e-3-wsd0.5-s1500": dict(EXAMPLE, **{"train.min_lr": 3e-5, "train.schedule": "wsd",
                                                 "train.decay_fraction": 0.5}),
    # Round 5: the router and expert layout around the example, at the same active size.
    "a5-bias-balance": dict(EXAMPLE, **{"model.moe.aux_loss_coef": 0.0, "model.moe.bias_update_rate": 0.001}),
    "a5-sigmoid-bias": dict(EXAMPLE, **{"model.moe.aux_loss_coef": 0.0, "model.moe.router_score": "sigmoid",
                                        "model.moe.bias_update_rate": 0.001}),
    "a5-shared1-k1": dict(EXAMPLE, **{"model.moe.top_k": 1, "model.moe.shared_experts": 1,
                                      "model.moe.shared_expert_hidden": 512}),
    "a5-e16k2": dict(EXAMPLE, **{"model.moe.num_experts": 16}),
    "a5-warmup200": dict(EXAMPLE, **{"train.warmup_steps": 200}),
    # Round 6: the two round-5 changes that helped seed 1337 (warm-up 200, a shared expert with
    # top-1) together, finer experts at the example's rate, and a longer cosine with the warm-up.
    "a6-shared1-k1-warmup200": dict(EXAMPLE, **{"model.moe.top_k": 1, "model.moe.shared_experts": 1,
                                                "model.moe.shared_expert_hidden": 512, "train.warmup_steps": 200}),
    "a6-e16k4": dict(EXAMPLE, **{"model.moe.num_experts": 16, "model.moe.top_k": 4, "model.moe.expert_hidden": 256}),
    "a6-warmup200-s1750": dict(EXAMPLE, **{"train.warmup_steps": 200, "train.steps": 1750}),
    "a6-lr1.25e-3-s1750": dict(EXAMPLE, **{"train.lr": 1.25e-3, "train.steps": 1750}),
    # Round 7: what was never tried around the example: a capacity limit (overflowing assignments
    # dropped, as Switch does: one more regulariser), a softer or sharper router.
    "a7-cap1.0": dict(EXAMPLE, **{"model.moe.capacity_factor": 1.0}),
    "a7-cap1.25": dict(EXAMPLE, **{"model.moe.capacity_factor": 1.25}),
    "a7-temp2": dict(EXAMPLE, **{"model.moe.router_temperature": 2.0}),
    "a7-temp0.5": dict(EXAMPLE, **{"model.moe.router_temperature": 0.5}),
    # Round 8: nanoGPT's shakespeare_char takes AdamW's beta2 0.99 (few tokens a step; ours was
    # fixed at 0.95 until train.beta2): on the example, at nanoGPT's lr, and a longer cosine.
    "a8-beta2-0.99": dict(EXAMPLE, **{"train.beta2": 0.99}),
    "a8-beta2-0.99-lr1e-3": dict(EXAMPLE, **{"train.beta2": 0.99, "train.lr": 1e-3}),
    "a8-beta2-0.99-s1750": dict(EXAMPLE, **{"train.beta2": 0.99, "train.steps": 1750}),
    "a8-beta2-0.99-cap1.25": dict(EXAMPLE, **{"train.beta2": 0.99, "model.moe.capacity_factor": 1.25}),
    # Round 9: the two changes that each lowered seed 1337 most (round 3's lr 1e-3 with min_lr 3e-5;
    # round 5's warm-up 200), together; and the example with a warm-up between its 100 and 200.
    "a9-lr1e-3-minlr3e-5-warmup200": dict(EXAMPLE, **{"train.lr": 1e-3, "train.min_lr": 3e-5,
                                                      "train.warmup_steps": 200}),
    "a9-warmup150": dict(EXAMPLE, **{"train.warmup_steps": 150}),
    # Round 10: round 9's pair at its full 1500 steps (it was cut at 1250), with a capacity limit,
    # QK-norm alone on the example (only ever tried with the gate at s3000), and capacity 1.25
    # with the longer warm-up.
    "a10-lr1e-3-minlr3e-5-warmup200": dict(EXAMPLE, **{"train.lr": 1e-3, "train.min_lr": 3e-5,
                                                       "train.warmup_steps": 200}),
    "a10-lr1e-3-minlr3e-5-warmup200-cap1.25": dict(EXAMPLE, **{"train.lr": 1e-3, "train.min_lr": 3e-5,
                                                               "train.warmup_steps": 200,
                                                               "model.moe.capacity_factor": 1.25}),
    "a10-qknorm": dict(EXAMPLE, **{"model.attention.qk_norm": True}),
    "a10-cap1.25-warmup200": dict(EXAMPLE, **{"model.moe.capacity_factor": 1.25, "train.warmup_steps": 200}),
    # Round 11: fewer experts at the same active size (more experts never helped: 16 at top-2 and
    # finer 16 at top-4 were worse; fewer leave less to overfit), and weight decay between the
    # example's 0.1 and round 2's worse 0.3.
    "a11-e4k2": dict(EXAMPLE, **{"model.moe.num_experts": 4}),
    "a11-e4k1-f1024": dict(EXAMPLE, **{"model.moe.num_experts": 4, "model.moe.top_k": 1,
                                       "model.moe.expert_hidden": 1024}),
    "a11-e4k2-warmup200": dict(EXAMPLE, **{"model.moe.num_experts": 4, "train.warmup_steps": 200}),
    "a11-wd0.2": dict(EXAMPLE, **{"train.weight_decay": 0.2}),
    # round 12: a weaker balancing loss (experts free to specialise), deeper and narrower at the
    # same active size, less residual dropout, a lower floor of the cosine with weight decay 0.2.
    "a12-aux1e-3": dict(EXAMPLE, **{"model.moe.aux_loss_coef": 0.001}),
    "a12-deep8-d320": dict(EXAMPLE, **{"model.n_layers": 8, "model.d_model": 320, "model.n_heads": 5,
                                       "model.n_kv_heads": 5, "model.moe.expert_hidden": 472}),
    "a12-drop0.15": dict(EXAMPLE, **{"model.dropout": 0.15}),
    "a12-wd0.2-minlr3e-5": dict(EXAMPLE, **{"train.weight_decay": 0.2, "train.min_lr": 3e-5}),
    # round 13 (deterministic GPU training from here on: a job gives the same bits every run):
    # around the residual dropout 0.15 of round 12.
    "a13-drop0.15-wd0.2": dict(EXAMPLE, **{"model.dropout": 0.15, "train.weight_decay": 0.2}),
    "a13-drop0.1": dict(EXAMPLE, **{"model.dropout": 0.1}),
    # examples/shakespeare-moe.yaml (the same job: tests/moectl_validate_test.cc compares them)
    # and its dense twin, the same recipe with one expert of the same active size.
    # Since round 12 the example is round 3's (EXAMPLE) with residual dropout 0.15 (a12-drop0.15).
    "example": dict(EXAMPLE, **{"model.dropout": 0.15}),
    # (expert dropout needs a router: the twin goes without it).
    "example-dense-twin": dict(EXAMPLE, **{"model.dropout": 0.15, "model.moe.num_experts": 1, "model.moe.top_k": 1,
                                           "model.moe.expert_hidden": 1024, "model.moe.expert_dropout": 0.0}),
    # The round-3 example's dense twin (rounds 1 to 11 compare against it).
    "example-r3-dense-twin": dict(EXAMPLE, **{"model.moe.num_experts": 1, "model.moe.top_k": 1,
                                              "model.moe.expert_hidden": 1024, "model.moe.expert_dropout": 0.0}),
    "attn0.2-lr6e-4-s4000": {"model.attention.dropout": 0.2, "train.lr": 6e-4, "train.min_lr": 6e-5,
                             "train.steps": 4000},
}


def with_overrides(base, overrides):
    job = copy.deepcopy(base)
    for dotted, value in overrides.items():
        node = job
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return job


def job_of(args, name, overrides, seed):
    job = with_overrides(with_overrides(BASE, overrides), args.overrides)
    job["name"] = re.sub(r"[^a-z0-9-]", "-", f"q-{name}-{seed}".lower())[:63]
    job["data"]["path"] = os.path.abspath(args.data)
    job["train"]["seed"] = seed
    return job


def run(args, name, overrides, seed):
    left = args.deadline - time.time()
    if left < 30:  # the device call's time is nearly spent: a row, not a half-run
        return dict(variant=name, seed=seed, error="not run: deadline")
    job = job_of(args, name, overrides, seed)
    path = os.path.join(args.out, f"{name}-{seed}.yaml")
    with open(path, "w") as f:
        json.dump(job, f, indent=1)
    active = "?"
    if args.moectl:
        v = subprocess.run([args.moectl, "validate", path], capture_output=True, text=True)
        if v.returncode != 0:
            return dict(variant=name, seed=seed, error=(v.stderr or v.stdout).strip()[:400])
        m = re.search(r"parameters\s+(\S+) total, (\S+) active", v.stdout)
        active = m.group(2) if m else "?"
    start = time.time()
    cmd = [args.worker, "--job", path, "--checkpoint-dir", os.path.join(args.out, f"ck-{name}-{seed}")]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.timeout, left))
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:  # keep the evaluations it reached
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        out, err, rc = text(e.stdout), text(e.stderr), "timeout"
    vals = []
    for line in out.splitlines() + err.splitlines():
        if '"val_loss"' not in line:
            continue
        try:
            d = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if d.get("val_loss") is not None:
            vals.append((d["val_loss"], d.get("step")))
    r = dict(variant=name, seed=seed, active=active, seconds=round(time.time() - start, 1), rc=rc,
             evals=len(vals))
    if vals:
        best = min(vals)
        r.update(best_val=round(best[0], 4), best_step=best[1], last_val=round(vals[-1][0], 4))
    else:
        r["error"] = (err or out)[-400:]
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", metavar="NAME", help="print variant NAME's job (first seed) as JSON and exit")
    ap.add_argument("--worker", default="")
    ap.add_argument("--moectl", default="")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--seeds", default="1337,1338")
    ap.add_argument("--parallel", type=int, default=3, help="runs sharing the GPU at once")
    ap.add_argument("--timeout", type=int, default=540)
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds from now after which no run starts and running ones are stopped (0: none)")
    ap.add_argument("--top", type=int, default=0,
                    help="> 0: every variant on the first seed, then only the best TOP (and the dense twins) on the rest")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override every variant's job (e.g. train.steps=20 resources.device=cpu); JSON values")
    a = ap.parse_args()
    a.overrides = {}
    a.deadline = time.time() + a.deadline if a.deadline > 0 else float("inf")
    for kv in a.set:
        key, _, value = kv.partition("=")
        try:
            a.overrides[key] = json.loads(value)
        except ValueError:
            a.overrides[key] = value
    if a.dump:
        if a.dump not in VARIANTS:
            sys.exit(f"unknown variant {a.dump}; known: {', '.join(VARIANTS)}")
        print(json.dumps(job_of(a, a.dump, VARIANTS[a.dump], int(a.seeds.split(",")[0])), indent=1))
        return
    if not a.worker or not a.out:
        sys.exit("--worker and --out are needed to run variants")
    os.makedirs(a.out, exist_ok=True)
    names = [n for n in a.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    results = []

    def sweep(jobs):
        with cf.ThreadPoolExecutor(a.parallel) as pool:
            futs = [pool.submit(run, a, n, VARIANTS[n], s) for n, s in jobs]
            for f in cf.as_completed(futs):
                try:
                    r = f.result()
                except Exception as e:  # a timeout or a crash is a row, not the end of the search
                    r = dict(error=str(e)[:300])
                print(json.dumps(r), flush=True)
                results.append(r)

    if a.top > 0:
        # Every variant on the first seed; the best `top` of them, and the dense twins, on the others.
        sweep([(n, seeds[0]) for n in names])
        ranked = sorted((r for r in results if "best_val" in r), key=lambda r: r["best_val"])
        again = [r["variant"] for r in ranked if "dense-twin" not in r["variant"]][:a.top]
        again += [n for n in names if "dense-twin" in n]
        sweep([(n, s) for n in again for s in seeds[1:]])
    else:
        sweep([(n, s) for n in names for s in seeds])
    print("\n| variant | active | best val per seed | mean | best at step | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in names:
        rs = sorted((r for r in results if r.get("variant") == n), key=lambda r: r["seed"])
        bests = [r["best_val"] for r in rs if "best_val" in r]
        mean = f"{sum(bests) / len(bests):.4f}" if bests else "-"
        per = " / ".join(f"{r['best_val']:.4f}" if "best_val" in r else "err" for r in rs)
        steps = " / ".join(str(r.get("best_step", "-")) for r in rs)
        secs = " / ".join(str(r.get("seconds", "-")) for r in rs)
        active = rs[0].get("active", "?") if rs else "?"
        print(f"| {n} | {active} | {per} | {mean} | {steps} | {secs} |")


if __name__ == "__main__":
    main()
