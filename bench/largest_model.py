#!/usr/bin/env python3
"""The largest MoE (total parameters) that fits one GPU with each combination of memory options
(issue 17 (b)), by our estimate: `moectl validate JOB --gpu-memory SIZE`.

For each combination (defaults; train.recompute full; train.optimizer_state int8;
train.master_weights bf16; and their combinations) it grows a base shape -- fixed d_model, head
size, seq_len and micro-batch -- in the number of experts, for each number of layers in
--layers, and keeps the shape with the most total parameters whose generated job file validate
says fits (exit 0; the "parameters X total, Y active" and "total Z (estimate" lines parsed).
A combination validate refuses for device cuda ("is not run by device cuda yet") is a "refused"
row. Each found job is written to --dir so the device call can train it.

  bench/largest_model.py [--gpu-memory 139GiB] [--dir DIR] [--moectl PATH]
  bench/largest_model.py --train [--worker PATH] [--steps N] ...   (on the GPU machine)
  bench/largest_model.py --train-job FILE [--steps N]   (one job file, trained: one JSON line)

--train also runs `moe-worker --job FILE --max-steps N` on every found job and reports the
measured peak memory, tokens/s, MFU and whether it trained (every step logged and the loss
falling from the first logged step to the last; no checkpoint is written) next to the estimate.
Output: one JSON line per combination, then a Markdown table.
"""
import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading

OPTIONS = [  # (short name, train key, value)
    ("recompute", "recompute", "full"),
    ("int8-state", "optimizer_state", "int8"),
    ("bf16-master", "master_weights", "bf16"),
]
SCALE = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}
BYTES = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def combinations():
    """Every subset of OPTIONS, the defaults first, then by size."""
    for k in range(len(OPTIONS) + 1):
        for combo in itertools.combinations(OPTIONS, k):
            yield combo


def combo_name(combo):
    return "+".join(o[0] for o in combo) or "defaults"


def file_name(combo):
    """The combination as a job name (a-z, 0-9 and '-')."""
    return "-".join(o[0] for o in combo) or "defaults"


def job_yaml(a, combo, layers, experts):
    # A warm-up over every step: a 5-step warm-up to 3e-4 made the 4B default shape's loss rise
    # (11.2 -> 14.2 in 5 steps on the H200), and a run counts as trained only when its loss falls.
    train = [f"steps: {a.steps}", f"batch_size: {a.micro_batch}", "precision: bf16", f"warmup_steps: {a.steps}",
             "lr: 3.0e-4", "min_lr: 3.0e-5", "log_every: 1", "eval_every: 100000"]
    train += [f"{key}: {value}" for _, key, value in combo]
    return (f"# bench/largest_model.py: the largest shape of '{combo_name(combo)}' for {a.gpu_memory}"
            f" by our estimate.\n"
            f"name: largest-{file_name(combo)}\n"
            f"model: {{d_model: {a.d_model}, n_layers: {layers}, n_heads: {a.d_model // a.head_size},"
            f" seq_len: {a.seq_len}, vocab_size: {a.vocab}, tie_embeddings: true, dropout: 0.0,\n"
            f"        moe: {{num_experts: {experts}, top_k: {a.top_k}, expert_hidden: {a.expert_hidden}}}}}\n"
            f"data: {{path: {a.data}, tokenizer: char, val_fraction: 0.05}}\n"
            f"train: {{{', '.join(train)}}}\n"
            f"resources: {{ranks: 1, device: cuda, launcher: local}}\n")


def parse_count(s):
    m = re.fullmatch(r"([0-9.]+)([KMBGTP]?)", s)
    return float(m.group(1)) * SCALE[m.group(2)] if m else None


def validate(a, path):
    """(status, total params, active params, estimated GiB): status fits / over / refused / error."""
    p = subprocess.run([a.moectl, "validate", path, "--gpu-memory", a.gpu_memory],
                       capture_output=True, text=True)
    errors = p.stderr.strip().splitlines()
    refusals = [re.sub(r"^.*?:\d+:\d+: ", "", e).split(";")[0] for e in errors if "is not run by device cuda yet" in e]
    if refusals and len(refusals) == len(errors):
        return "refused", None, None, None, ", ".join(refusals)
    m = re.search(r"parameters\s+(\S+) total, (\S+) active", p.stdout)
    e = re.search(r"total ([0-9.]+) (B|KiB|MiB|GiB|TiB) \(estimate", p.stdout)
    total = parse_count(m.group(1)) if m else None
    active = parse_count(m.group(2)) if m else None
    gib = float(e.group(1)) * BYTES[e.group(2)] / 2**30 if e else None
    if p.returncode == 0 and "gpu memory   fits" in p.stdout:
        return "fits", total, active, gib, ""
    if p.returncode == 0 and "does not fit" in p.stdout:
        return "oversubscribed", total, active, gib, ""
    if p.returncode == 0 and "gpu memory   not checked" in p.stdout:
        return "cpu", total, active, gib, ""
    # Not fitting is a failed validation: nothing on stdout, the need on stderr.
    over = re.search(r"resources: the job needs about ([0-9.]+) (B|KiB|MiB|GiB|TiB) per GPU", p.stderr)
    if p.returncode == 2 and over:
        return "over", total, active, float(over.group(1)) * BYTES[over.group(2)] / 2**30, ""
    return "error", total, active, gib, (p.stderr.strip() or p.stdout.strip())[-300:]


def search(a, combo):
    """The row of one combination: the fitting (layers, experts) with the most total parameters."""
    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, f"largest-{file_name(combo)}.yaml")
    scratch = path + ".try.yaml"
    cache = {}

    def check(layers, experts):
        if (layers, experts) not in cache:
            with open(scratch, "w") as f:
                f.write(job_yaml(a, combo, layers, experts))
            cache[(layers, experts)] = validate(a, scratch)
        return cache[(layers, experts)]

    best = None
    for layers in a.layers:
        low = check(layers, a.top_k)
        if low[0] == "refused":
            os.remove(scratch)
            return {"combination": combo_name(combo), "status": "refused", "reason": low[4]}
        if low[0] == "error":
            os.remove(scratch)
            return {"combination": combo_name(combo), "status": "error", "reason": low[4]}
        if low[0] != "fits":
            continue
        lo, hi = a.top_k, a.top_k * 2  # lo fits; grow hi until it does not (or the cap)
        while hi <= a.max_experts and check(layers, hi)[0] == "fits":
            lo, hi = hi, hi * 2
        hi = min(hi, a.max_experts + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if check(layers, mid)[0] == "fits":
                lo = mid
            else:
                hi = mid
        r = check(layers, lo)
        if best is None or r[1] > best[2][1]:
            best = (layers, lo, r)
    if os.path.exists(scratch):
        os.remove(scratch)
    if best is None:
        return {"combination": combo_name(combo), "status": "none fits"}
    layers, experts, r = best
    with open(path, "w") as f:
        f.write(job_yaml(a, combo, layers, experts))
    return {"combination": combo_name(combo), "status": "fits", "n_layers": layers, "num_experts": experts,
            "total_params": r[1], "active_params": r[2], "estimate_gib": r[3], "job": path}


def step_of(line):
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return r.get("step") if "loss" in r else None


def run_worker(a, job, steps, timeout):
    """(exit code, output) of `moe-worker --job JOB --max-steps STEPS`, killed as soon as it has
    logged its last step: its final checkpoint (a 10B model's fp32 state is larger than the
    machine's disk) is never finished; the partial one is removed."""
    ck = job[:-len(".yaml")] + ".ck"
    shutil.rmtree(ck, ignore_errors=True)
    p = subprocess.Popen([a.worker, "--job", job, "--max-steps", str(steps), "--checkpoint-dir", ck],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    out, rc = [], None
    for line in p.stdout:
        out.append(line)
        if line.startswith("{") and step_of(line) == steps:
            rc = "done"
            p.kill()
            break
    p.wait()
    timer.cancel()
    shutil.rmtree(ck, ignore_errors=True)
    if rc is None:
        rc = p.returncode if p.returncode is not None else "killed"
        if p.returncode == -9:
            rc = "timeout"
    return rc, "".join(out)


def train(a, row):
    """Trains the row's job with moe-worker; adds the measurements (never guessed) to the row."""
    log = row["job"][:-len(".yaml")] + ".log"
    rc, out = run_worker(a, row["job"], a.steps, a.train_timeout)
    with open(log, "w") as f:
        f.write(out)
    steps = []
    for line in out.splitlines():
        if line.startswith("{") and '"step"' in line:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "loss" in r:
                steps.append(r)
    row["train_rc"] = rc
    row["steps_logged"] = len(steps)
    if steps:
        half = steps[len(steps) // 2:]
        med = lambda k: sorted(s.get(k) or 0 for s in half)[len(half) // 2]
        row["loss_first"], row["loss_last"] = steps[0]["loss"], steps[-1]["loss"]
        row["tokens_per_s"], row["mfu"] = med("tokens_per_s"), med("mfu")
        peak = max(s.get("peak_memory_mb") or 0 for s in steps)
        row["peak_gib"] = peak / 1024
        if row.get("estimate_gib") and peak:
            row["estimate_over_peak"] = row["estimate_gib"] / row["peak_gib"]
    # Trained: every step logged ("done": stopped before its final checkpoint) and the loss falling.
    row["trained"] = (rc == "done" and len(steps) >= 2 and steps[-1].get("step") == a.steps
                      and steps[-1]["loss"] < steps[0]["loss"])
    failed = [l[l.index("out of "):] for l in out.splitlines() if "out of GPU memory" in l or "out of host" in l]
    failed = failed or [l for l in out.splitlines() if "FAILED" in l or "rror" in l]
    if rc != "done":
        failed = failed or [l for l in out.splitlines() if l.strip()][-1:]
    if failed:
        row["failure"] = failed[-1][:300]
    return row


def count(v):
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def fmt(v, f):
    return f % v if v is not None else "-"


def table(rows, trained):
    head = "| combination | total params | active params | layers x experts | estimated GiB | job |"
    if trained:
        head += " trained | loss first -> last | peak GiB | estimate / peak | tokens/s | MFU |"
    print("\n" + head)
    print("|" + " --- |" * head.count(" | ") + " --- |")
    for r in rows:
        if r["status"] != "fits":
            cells = [r["combination"], r["status"], "-", "-", "-", r.get("reason", "-")]
            print("| " + " | ".join(cells) + " |" + (" - | - | - | - | - | - |" if trained else ""))
            continue
        line = (f"| {r['combination']} | {count(r['total_params'])} | {count(r['active_params'])} | "
                f"{r['n_layers']} x {r['num_experts']} | {fmt(r['estimate_gib'], '%.1f')} | {r['job']} |")
        if trained:
            loss = (f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-")
            mfu = r.get("mfu")
            done = ("yes" if r.get("trained") else "not run" if "train_rc" not in r
                    else "no (rc " + str(r.get("train_rc")) + ")")
            line += (f" {done} | {loss} | "
                     f"{fmt(r.get('peak_gib'), '%.1f')} | {fmt(r.get('estimate_over_peak'), '%.2f')} | "
                     f"{fmt(r.get('tokens_per_s'), '%.0f')} | {fmt(100 * mfu if mfu else None, '%.1f%%')} |")
        print(line)
    base = next((r for r in rows if r["combination"] == "defaults" and r["status"] == "fits"), None)
    if base:
        best = max((r for r in rows if r["status"] == "fits"), key=lambda r: r["total_params"])
        print(f"\nlargest: {best['combination']}, {best['total_params'] / base['total_params']:.2f} x the total "
              f"parameters that fit with the defaults (estimate)")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-memory", default="139GiB", help="usable memory of the GPU (moectl's sizes)")
    ap.add_argument("--dir", default="/tmp/moe-largest", help="where the found job files go")
    ap.add_argument("--moectl", default=os.path.join(root, ".carry/bin/moectl"))
    ap.add_argument("--worker", default=os.path.join(root, ".carry/bin/moe-worker"))
    ap.add_argument("--data", default=os.path.join(root, "..", "shared", "data", "tinyshakespeare", "input.txt"),
                    help="the text (char tokenizer; its 10%% val split must hold a sequence)")
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--head-size", type=int, default=128)
    ap.add_argument("--expert-hidden", type=int, default=5504)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per step (one micro-batch)")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--layers", default="16,24,32,48", help="numbers of layers to try, comma-separated")
    ap.add_argument("--max-experts", type=int, default=1024)
    ap.add_argument("--only", default="", help="combinations to run, comma-separated (default all)")
    ap.add_argument("--train", action="store_true", help="train each found job (the GPU machine)")
    ap.add_argument("--train-job", default="", help="train this one job file instead of a search: one JSON line")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-timeout", type=int, default=240)
    a = ap.parse_args()
    a.layers = [int(x) for x in a.layers.split(",") if x]
    if not os.path.exists(a.moectl) and shutil.which("moectl"):
        a.moectl = shutil.which("moectl")
    if a.train_job:
        status, total, active, gib, reason = validate(a, a.train_job)
        row = {"combination": os.path.basename(a.train_job), "status": status, "total_params": total,
               "active_params": active, "estimate_gib": gib, "job": a.train_job}
        print(json.dumps(train(a, row)), flush=True)
        return 0
    only = set(x for x in a.only.split(",") if x)
    known = [combo_name(c) for c in combinations()]
    if only - set(known):
        ap.error(f"--only: no combination {', '.join(sorted(only - set(known)))}; the combinations are {', '.join(known)}")
    rows = []
    for combo in combinations():
        chosen = not only or combo_name(combo) in only
        if not chosen and combo_name(combo) != "defaults":
            continue
        row = search(a, combo)  # (the defaults always: the ratio's base, trained only when chosen)
        if a.train and chosen and row["status"] == "fits":
            row = train(a, row)
        print(json.dumps(row), flush=True)
        rows.append(row)
    table(rows, a.train)
    return 0 if all(r["status"] in ("fits", "refused", "none fits") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
