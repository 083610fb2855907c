"""Benchmark: the NumPy spec against Hugging Face GPT-2 on PyTorch, same weights, same run.

    python benchmarks/bench_spec.py [--model gpt2] [--decode-tokens 32] [--repeats 3]

Prints prefill time for 1x128 and 8x128 and KV-cache decode tokens/s, with the spec / HF
ratio (> 1 means the spec is faster), and the spec's decode against the memory-bandwidth floor:
one token needs every weight read once (a matrix-vector product per weight matrix, the tied head's
wte included), so `gemv_floor` -- exactly those products, one after another over the distinct
arrays (so they stream from memory as decode does, not from cache) -- is the least a token can
cost here; the spec's steady per-token time is (decode of n tokens - decode of 1) / (n - 1), i.e.
without the prompt's prefill.  Both sides use the same random 124M weights and the
greedy tokens are compared, so the numbers are for the same computation.  Needs the oracle
extra (torch, transformers).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import ref_numpy as R
from weights.hf_names import hf_name


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hf_and_spec_models(name, seed):
    import torch
    import transformers

    config = R.GPTConfig.from_name(name)
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(vocab_size=config.n_vocab, n_positions=config.n_ctx, n_embd=config.n_embd,
                                        n_layer=config.n_layer, n_head=config.n_head, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    state = model.state_dict()
    params = R.unflatten_params({n: state[hf_name(n, "gpt2")].numpy().copy() for n in R.expected_shapes(config)})
    return config, params, model


def gemv_floor(config, params):
    """A function doing one token's unavoidable work: x @ w for every weight matrix w of the blocks
    (c_attn, attn c_proj, c_fc, mlp c_proj), in the order decode reads them, then the tied head's
    x @ wte.T, each with a one-row x -- the bytes of every weight read once, nothing else."""
    C = config.n_embd
    x = np.random.default_rng(0).standard_normal((1, C)).astype(params["wte"].dtype)
    x4 = np.concatenate([x] * 4, axis=1)
    matrices = [w for block in params["blocks"] for w in (block["attn"]["c_attn"]["w"], block["attn"]["c_proj"]["w"],
                                                          block["mlp"]["c_fc"]["w"], block["mlp"]["c_proj"]["w"])]

    def one_token():
        for w in matrices:
            (x if w.shape[0] == C else x4) @ w
        return x @ params["wte"].T

    return one_token


def hf_greedy_decode(model, prompt, n):
    """n greedy tokens from HF's forward with its KV cache, without generate()'s machinery."""
    import torch

    with torch.inference_mode():
        out = model(torch.tensor(prompt), use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(n - 1):
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
    return np.array(tokens)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", choices=[n for n, p in R.PRESETS.items() if p["arch"] == "gpt2"])
    parser.add_argument("--decode-tokens", type=int, default=32, help="at least 2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.decode_tokens < 2 or args.repeats < 1:
        parser.error(f"--decode-tokens must be >= 2 and --repeats >= 1, got {args.decode_tokens}, {args.repeats}")

    import torch

    config, params, model = hf_and_spec_models(args.model, 0)
    rng = np.random.default_rng(0)
    rows = []

    for batch in (1, 8):
        ids = rng.integers(0, config.n_vocab, size=(batch, 128))
        spec = best_of(lambda: R.forward(config, params, ids), args.repeats)
        with torch.inference_mode():
            hf = best_of(lambda: model(torch.tensor(ids)), args.repeats)
        rows.append((f"prefill {batch}x128 (s)", spec, hf, hf / spec))

    prompt = rng.integers(0, config.n_vocab, size=(1, 16))
    n = args.decode_tokens

    def spec_decode():
        return R.generate(config, params, prompt, n, greedy=True)

    def hf_generate():
        with torch.inference_mode():
            return model.generate(torch.tensor(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  pad_token_id=0).numpy()

    def hf_loop():  # HF's forward with its KV cache, without generate()'s machinery
        return hf_greedy_decode(model, prompt, n)

    same = np.array_equal(spec_decode()[0, 16:], hf_generate()[0, 16:])
    spec = n / best_of(spec_decode, args.repeats)
    hf_gen = n / best_of(hf_generate, args.repeats)
    hf_raw = n / best_of(hf_loop, args.repeats)
    rows.append((f"decode tok/s vs HF generate() (16+{n})", spec, hf_gen, spec / hf_gen))
    rows.append((f"decode tok/s vs HF forward loop (16+{n})", spec, hf_raw, spec / hf_raw))
    per_token = (best_of(spec_decode, args.repeats) - best_of(lambda: R.generate(config, params, prompt, 1, greedy=True),
                                                             args.repeats)) / (n - 1)
    floor = best_of(gemv_floor(config, params), 3 * args.repeats)
    weight_mb = (sum(w.nbytes for w in R.flatten_params(params).values()) - params["wpe"].nbytes) / 2**20

    print(f"# {args.model}, float32, {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); best of {args.repeats}")
    print(f"| {'measure':<42} | {'spec':>10} | {'HF torch':>10} | {'spec vs HF':>10} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 12}|{'-' * 12}|")
    for label, spec_value, hf_value, ratio in rows:
        print(f"| {label:<42} | {spec_value:>10.3f} | {hf_value:>10.3f} | {ratio:>9.2f}x |")
    print(f"greedy tokens identical to HF generate(): {same}")
    print(f"decode vs the memory-bandwidth floor: spec {per_token * 1e3:.1f} ms per token after the prompt, "
          f"gemv of every weight once ({weight_mb:.0f} MB) {floor * 1e3:.1f} ms ({weight_mb / 1024 / floor:.1f} GB/s): "
          f"the spec runs at {floor / per_token:.0%} of the floor")


if __name__ == "__main__":
    main()
