"""Benchmark: one training step (forward, backward, clip, AdamW) of the NumPy spec against
Hugging Face GPT-2 on PyTorch, same weights, same run.

    python benchmarks/bench_train.py [--model gpt2] [--batch 4] [--tokens 128] [--steps 3] [--threads N]
    python benchmarks/bench_train.py --batch 8 --backends "mindspore graph fp32,mindspore graph fp32 grad-accum"
    python benchmarks/bench_train.py --scale [--models gpt2,gpt2-medium,gpt2-large] [--memory-limit-gb 20]

Each backend runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own;
"step memory" is that peak minus the process's resident memory once its libraries are imported,
i.e. the model, optimizer state, activations and gradients.  float32, dropout 0, lr 6e-4,
weight decay 0.1 on matrices and embeddings only, clip at 1.0.  Both sides start from the same
weights (ref_numpy.init_params) and the same batch, and their first losses are printed side by
side (they must agree to float32 rounding).  Ratios are against PyTorch (> 1: faster).  Needs the
oracle extra (torch, transformers) for the PyTorch row.

--threads N caps every backend's compute threads (OpenBLAS/OpenMP through the environment of its
subprocess, torch.set_num_threads, MindSpore's CPU kernel pool); default: each library's own choice.
On a machine shared with other jobs, torch's default threads slow down several-fold (they wait on
each other at every parallel op), so `--threads 1` is the steadier comparison there.

The "mindspore graph fp32 grad-accum" row makes the same update from --grad-accum micro-batches
(Trainer.accumulate_step: their gradients summed on the device, one micro-batch's activations alive
at a time); beside "mindspore graph fp32" it shows what --grad-accum saves in memory.

--scale: the largest GPT-2 each backend trains here -- one step of batch 1 x 1024 tokens (after a
warm-up step) for each preset, on PyTorch, the NumPy spec and MindSpore graph fp32 with and without
`recompute` (Trainer(recompute=True), the CLI's --recompute: block-wise recomputation, only the
blocks' inputs kept between the forward and the backward).  Every backend's subprocess runs under a watchdog (watchdog.py) that kills it above
--memory-limit-gb of resident memory (or when the machine runs out): such a row reads "does not fit in
N GB", measured, not estimated.  --backends NAME,... runs a subset in either mode.

Other backends: add a function `run_NAME(args) -> dict` below and list it in BACKENDS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ref_numpy as R  # noqa: E402
from watchdog import run_limited  # noqa: E402

LR, WEIGHT_DECAY, MAX_NORM, BETAS, EPS = 6e-4, 0.1, 1.0, (0.9, 0.999), 1e-8


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def same_inputs(args):
    """config, float32 params, inputs and targets [B, T]: identical in every backend's process."""
    config = R.GPTConfig.from_name(args.model)
    params = R.init_params(config, seed=0, dtype=np.float32)
    ids = np.random.default_rng(1).integers(0, config.n_vocab, (args.batch, args.tokens + 1))
    return config, params, ids[:, :-1], ids[:, 1:]


def timed_steps(step, n):
    """Run step() once to warm up, then n times; returns (first loss, step times in s)."""
    first_loss = step()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first_loss, times


def run_numpy(args) -> dict:
    baseline = rss_mb()
    config, params, inputs, targets = same_inputs(args)
    state = R.adamw_init(params)

    def step():
        nonlocal params, state
        loss, grads = R.loss_and_grads(config, params, inputs, targets)
        grads, _ = R.clip_grad_norm(grads, MAX_NORM)
        # in place, as the training backend (gptspec.training.backends.NumpyBackend) updates
        params, state = R.adamw_step(params, grads, state, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                                     inplace=True)
        return loss

    loss, times = timed_steps(step, args.steps)
    return dict(loss=loss, times=times, baseline_mb=baseline, peak_mb=peak_rss_mb(),
                threads=f"OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS', 'default')} threads")


def run_pytorch(args) -> dict:
    import torch
    import transformers

    from weights.hf_names import hf_name

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = rss_mb()
    config, params, inputs, targets = same_inputs(args)
    hf_config = transformers.GPT2Config(vocab_size=config.n_vocab, n_positions=config.n_ctx, n_embd=config.n_embd,
                                        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0,
                                        embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_config)
    state = model.state_dict()
    with torch.no_grad():
        for name, array in R.flatten_params(params).items():
            state[hf_name(name, "gpt2")].copy_(torch.from_numpy(array))
    del params, state
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS)
    x, y = torch.from_numpy(inputs), torch.from_numpy(targets)

    def step():
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.n_vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    loss, times = timed_steps(step, args.steps)
    return dict(loss=loss, times=times, baseline_mb=baseline, peak_mb=peak_rss_mb(),
                threads=f"torch {torch.get_num_threads()} threads")


# MindSpore rows (issue 12): ms_backend.Trainer's whole step (forward, backward, loss scaling, clipping,
# AdamW) as one compiled graph, or op by op in PyNative.  The warm-up step is timed on its own: in
# graph mode it is the compilation (reported below the table, not in the step time).
def _run_mindspore(args, *, amp_level="O0", mode="graph", recompute=False, grad_accum=1) -> dict:
    import mindspore

    from ms_backend import Trainer

    if args.threads:
        mindspore.device_context.cpu.op_tuning.threads_num(args.threads)
    baseline = rss_mb()
    config, params, inputs, targets = same_inputs(args)
    trainer = Trainer(config, params, amp_level=amp_level, mode=mode, lr=LR, betas=BETAS, eps=EPS,
                      weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_NORM,
                      loss_scale=None if amp_level == "O0" else "dynamic", recompute=recompute)
    del params
    built_mb = rss_mb()  # weights in MindSpore (the moments are allocated by the first update)
    size = -(-len(inputs) // grad_accum)
    micro = [(inputs[k:k + size], targets[k:k + size]) for k in range(0, len(inputs), size)]

    def step():  # one update: the whole batch, or its micro-batches' gradients summed on the device
        return (trainer.step(inputs, targets) if grad_accum == 1 else trainer.accumulate_step(micro)).loss

    start = time.perf_counter()
    first = trainer.step(inputs, targets) if grad_accum == 1 else trainer.accumulate_step(micro)
    compile_s = time.perf_counter() - start
    _, times = timed_steps(step, args.steps)  # its warm-up: a compiled step
    skipped = (", first step skipped (overflow)" if first.skipped else "") if amp_level != "O0" else ""
    what = (" recompute" if recompute else "") + (f" grad-accum {grad_accum}" if grad_accum > 1 else "")
    return dict(loss=first.loss, times=times, baseline_mb=baseline, peak_mb=peak_rss_mb(),
                threads=f"mindspore {mindspore.__version__} {mode} {amp_level}{what}{skipped}", first_step_s=compile_s,
                built_mb=built_mb)


def run_mindspore_graph(args) -> dict:
    return _run_mindspore(args)


def run_mindspore_graph_recompute(args) -> dict:
    return _run_mindspore(args, recompute=True)


def run_mindspore_graph_accumulated(args) -> dict:
    return _run_mindspore(args, grad_accum=args.grad_accum)


def run_mindspore_graph_o2(args) -> dict:
    return _run_mindspore(args, amp_level="O2")


def run_mindspore_pynative(args) -> dict:
    return _run_mindspore(args, mode="pynative")


# name -> runner; each runner returns loss, times, baseline_mb, peak_mb, threads.  The table's
# ratios are against REFERENCE.  (MindSpore rows: add e.g. "mindspore fp32": run_mindspore.)
BACKENDS = {"numpy spec": run_numpy, "pytorch (HF)": run_pytorch, "mindspore graph fp32": run_mindspore_graph,
            "mindspore graph fp32 recompute": run_mindspore_graph_recompute,
            "mindspore graph fp32 grad-accum": run_mindspore_graph_accumulated,
            "mindspore graph O2 fp16": run_mindspore_graph_o2, "mindspore pynative fp32": run_mindspore_pynative}
REFERENCE = "pytorch (HF)"
# --scale: the largest GPT-2 each backend trains here (one step of batch 1 x 1024 tokens per preset)
SCALE_MODELS = ("gpt2", "gpt2-medium", "gpt2-large")
SCALE_BACKENDS = ("pytorch (HF)", "numpy spec", "mindspore graph fp32", "mindspore graph fp32 recompute")


def run_in_subprocess(name, args, model=None, batch=None, tokens=None) -> dict:
    """Run backend `name` in a subprocess under the --memory-limit-gb watchdog (watchdog.py).  -> its JSON,
    or {"error": ...}; a run killed by the watchdog also has "killed" (why) and "peak_mb" (sampled)."""
    model, batch, tokens = model or args.model, batch or args.batch, tokens or args.tokens
    command = [sys.executable, __file__, "--backend", name, "--model", model, "--batch", str(batch),
               "--tokens", str(tokens), "--steps", str(args.steps), "--grad-accum", str(args.grad_accum)]
    env = dict(os.environ)
    if args.threads:  # read by OpenBLAS / OpenMP when the subprocess loads them
        command += ["--threads", str(args.threads)]
        env.update({name: str(args.threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    done = run_limited(command, limit_gb=args.memory_limit_gb, env=env)
    if done.killed:
        return dict(error=f"killed: {done.killed}", killed=done.killed, over_limit=done.over_limit,
                    peak_mb=done.peak_gb * 1024)
    if done.returncode != 0:
        return dict(error=(done.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results, args):
    tokens = args.batch * args.tokens
    reference = results.get(REFERENCE, {})
    ref_speed = tokens / min(reference["times"]) if "times" in reference else None
    threads = f"{args.threads} thread(s) per backend" if args.threads else "default threads"
    print(f"one training step of {args.model}, batch {args.batch} x {args.tokens} tokens, float32 "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads}); "
          f"best of {args.steps} steps")
    print(f"| backend | first loss | step (s) | tokens/s | vs {REFERENCE} | peak RSS (MB) | step memory (MB) | threads |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        best = min(r["times"])
        ratio = f"{tokens / best / ref_speed:.2f}x" if ref_speed else "-"
        print(f"| {name} | {r['loss']:.6f} | {best:.2f} | {tokens / best:.0f} | {ratio} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['baseline_mb']:.0f} | {r['threads']} |")
    for name, r in results.items():  # MindSpore: the first step (graph compilation), not in the step time
        if "first_step_s" in r:
            print(f"{name}: first step (compile + run) {r['first_step_s']:.1f} s; resident memory "
                  f"{r['baseline_mb']:.0f} MB after imports, {r['built_mb']:.0f} MB with the Trainer built, "
                  f"peak {r['peak_mb']:.0f} MB")


def print_scale_table(results, args):
    """The --scale table: per preset and backend, the peak resident memory and the step time, or
    what stopped the run (the watchdog's limit, or an error)."""
    print(f"the largest GPT-2 each backend trains here: one training step of batch 1 x 1024 tokens, float32 "
          f"(AdamW, clipping), {os.cpu_count()} cores, "
          f"{f'{args.threads} thread(s)' if args.threads else 'default threads'}; step = best of {args.steps} "
          f"after a warm-up step; each run in a subprocess killed above {args.memory_limit_gb:g} GB resident")
    print("| model | parameters | backend | peak RSS (GB) | step (s) | first step (s) | result |")
    print("|---|---|---|---|---|---|---|")
    for (model, name), r in results.items():
        n_params = sum(np.prod(shape) for shape in R.expected_shapes(R.GPTConfig.from_name(model)).values())
        if r.get("over_limit"):
            row = f"> {args.memory_limit_gb:g} | | | does not fit in {args.memory_limit_gb:g} GB (killed at {r['peak_mb'] / 1024:.1f})"
        elif "killed" in r:
            row = f"({r['peak_mb'] / 1024:.1f} when stopped) | | | not measured: {r['killed']}"
        elif "error" in r:
            row = f" | | | failed: {r['error']}"
        else:
            first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else ""
            row = f"{r['peak_mb'] / 1024:.2f} | {min(r['times']):.1f} | {first} | trains (loss {r['loss']:.4f})"
        print(f"| {model} | {n_params / 1e6:.0f}M | {name} | {row} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", choices=sorted(R.PRESETS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps after one warm-up step (default 3; with --scale 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="compute threads per backend (default: each library's own)")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated backends to run (default: all; --scale: {', '.join(SCALE_BACKENDS)})")
    parser.add_argument("--scale", action="store_true",
                        help=f"one step of batch 1 x 1024 for each of {', '.join(SCALE_MODELS)} (--models to choose)")
    parser.add_argument("--models", default=",".join(SCALE_MODELS), help="comma-separated presets for --scale")
    parser.add_argument("--memory-limit-gb", type=float, default=20.0,
                        help="kill a backend's subprocess whose resident memory exceeds this (default 20)")
    parser.add_argument("--grad-accum", type=int, default=4,
                        help="micro-batches per update of the 'mindspore graph fp32 grad-accum' row (default 4)")
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="run one backend here and print JSON")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 1 if args.scale else 3
    for option in ("threads", "steps", "batch", "tokens", "grad_accum"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    if not args.memory_limit_gb > 0:
        parser.error(f"--memory-limit-gb must be > 0, got {args.memory_limit_gb}")
    if args.backend:
        print(json.dumps(BACKENDS[args.backend](args)))
        return
    names = (args.backends.split(",") if args.backends else SCALE_BACKENDS if args.scale else list(BACKENDS))
    models = args.models.split(",")
    unknown = [n for n in names if n not in BACKENDS] + [m for m in models if m not in R.PRESETS]
    if unknown:
        parser.error(f"unknown backend or model {unknown[0]!r}: backends are {sorted(BACKENDS)}, "
                     f"models {sorted(R.PRESETS)}")
    if args.scale:
        print_scale_table({(model, name): run_in_subprocess(name, args, model, 1, 1024)
                           for model in models for name in names}, args)
    else:
        print_table({name: run_in_subprocess(name, args) for name in names}, args)


if __name__ == "__main__":
    main()
