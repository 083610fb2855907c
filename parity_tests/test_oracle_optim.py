"""Oracle: ref_numpy's AdamW, schedule and clipping against torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_, float64 on both sides.

    python -m parity_tests.test_oracle_optim     prints the worst error per tensor and its bound
"""
from __future__ import annotations

import numpy as np
import pytest

from gptspec.compare import assert_close, compare
from gptspec.tolerances import grad_norm_bound, optimizer_bound
from ref_numpy import (GPTConfig, adamw_init, adamw_step, clip_grad_norm, flatten_params, init_params, lr_at,
                       unflatten_params)

pytestmark = pytest.mark.oracle

CONFIGS = {arch: GPTConfig(arch=arch, n_vocab=13, n_ctx=8, n_embd=8, n_head=2, n_layer=2) for arch in ("gpt1", "gpt2")}
STEPS, WARMUP, MAX_LR = 6, 2, 1e-2
HYPER = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def gradient_sequence(params, seed, scale):
    """STEPS gradient trees for params, each tensor's gradients at its own random scale (so that the
    relative sizes of m and v differ between tensors, as in training)."""
    rng = np.random.default_rng(seed)
    flat = flatten_params(params)
    sizes = {name: scale * 10.0 ** rng.uniform(-2, 1) for name in flat}
    return [unflatten_params({n: sizes[n] * rng.standard_normal(p.shape) for n, p in flat.items()})
            for _ in range(STEPS)]


def run_both(arch, seed, *, clip=None, scale=1e-2, max_lr=MAX_LR):
    """The same STEPS updates by the spec and by torch; returns (spec params, torch params) flat."""
    torch = pytest.importorskip("torch")
    config = CONFIGS[arch]
    params = init_params(config, seed, dtype=np.float64, random_biases=True)
    flat = flatten_params(params)
    tensors = {n: torch.nn.Parameter(torch.tensor(p)) for n, p in flat.items()}
    groups = [{"params": [t for n, t in tensors.items() if flat[n].ndim >= 2], "weight_decay": HYPER["weight_decay"]},
              {"params": [t for n, t in tensors.items() if flat[n].ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=max_lr, betas=HYPER["betas"], eps=HYPER["eps"])
    state = adamw_init(params)
    for step, grads in enumerate(gradient_sequence(params, seed + 1, scale)):
        lr = lr_at(step, max_lr=max_lr, warmup_steps=WARMUP, total_steps=STEPS, schedule="cosine")
        for name, g in flatten_params(grads).items():
            tensors[name].grad = torch.tensor(g)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
            grads, _ = clip_grad_norm(grads, clip)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        params, state = adamw_step(params, grads, state, lr=lr, **HYPER)
    return flatten_params(params), {n: t.detach().numpy() for n, t in tensors.items()}


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_adamw_with_schedule_matches_torch(arch, clip):
    spec, oracle = run_both(arch, seed=3, clip=clip)
    bound = optimizer_bound("float64", STEPS, MAX_LR)
    for name, reference in oracle.items():
        assert_close(name, spec[name], reference, bound)


def test_a_wrong_update_would_cross_the_bound():
    """The smallest plausible bug (eps inside the sqrt, or no bias correction) moves parameters by
    ~lr x something, orders of magnitude above optimizer_bound: check the bound is that tight by
    running the OpenAI variant (eps placement, decay scaling) against torch."""
    torch = pytest.importorskip("torch")
    params = init_params(CONFIGS["gpt2"], 0, dtype=np.float64)
    grads = gradient_sequence(params, 1, 1e-2)[0]
    tensors = {n: torch.nn.Parameter(torch.tensor(p)) for n, p in flatten_params(params).items()}
    for name, g in flatten_params(grads).items():
        tensors[name].grad = torch.tensor(g)
    torch.optim.AdamW(list(tensors.values()), lr=1e-3, weight_decay=0.1).step()
    other, _ = adamw_step(params, grads, adamw_init(params), lr=1e-3, weight_decay=0.1, variant="openai-gpt1")
    reference = tensors["wte"].detach().numpy()
    assert not compare("wte", flatten_params(other)["wte"], reference, optimizer_bound("float64", 1, 1e-3)).passed


@pytest.mark.parametrize("max_norm, scale", [(1.0, 1.0), (1.0, 1e-3), (1e-2, 10.0)])
def test_clip_grad_norm_matches_torch(max_norm, scale):
    torch = pytest.importorskip("torch")
    params = init_params(CONFIGS["gpt2"], 0, dtype=np.float64)
    grads = gradient_sequence(params, 5, scale)[0]
    flat = flatten_params(grads)
    tensors = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in flat.values()]
    for t, g in zip(tensors, flat.values()):
        t.grad = torch.tensor(g)
    torch_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    clipped, norm = clip_grad_norm(grads, max_norm)
    n_elements = sum(g.size for g in flat.values())
    bound = grad_norm_bound("float64", n_elements, len(flat))
    assert_close("total_norm", np.array(norm), np.array(torch_norm), bound)
    for (name, g), t in zip(flatten_params(clipped).items(), tensors):
        assert_close(name, g, t.grad.numpy(), bound)


def main():
    """Worst error per architecture and case, against the bound."""
    bound = optimizer_bound("float64", STEPS, MAX_LR)
    for arch in CONFIGS:
        for clip in (None, 0.5):
            spec, oracle = run_both(arch, seed=3, clip=clip)
            worst = max((compare(n, spec[n], r, bound) for n, r in oracle.items()), key=lambda c: c.bound_ratio)
            print(f"{arch} clip={clip}: worst {worst.name} max abs err {worst.max_abs:.3g}, "
                  f"allowed {worst.allowed:.3g} ({worst.bound_ratio:.2g} of the bound; {bound.reason})")


if __name__ == "__main__":
    main()
