"""The spec's gradients against PyTorch autograd on Hugging Face's models, in float64.

Random GPT2LMHeadModel / OpenAIGPTLMHeadModel (every parameter randomised, mapped into our params
by weights.hf as in test_oracle_hf.py), the cross-entropy computed here in float64 with -100
on padding (transformers' own loss upcasts to float32), `loss.backward()`, and every parameter's
gradient compared per tensor with backward_bound(float64).  HF ties lm_head.weight to the token
embedding, so its .grad is the embedding part plus the head part, like ours.

    python -m parity_tests.test_oracle_hf_grads     prints the worst error of every tensor
"""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.compare import compare
from gptspec.tolerances import backward_bound, reorder_bound
from weights.hf import params_from_state

torch = pytest.importorskip("torch", reason="oracle extra (torch) not installed")
pytest.importorskip("transformers", reason="oracle extra (transformers) not installed")
pytestmark = pytest.mark.oracle

from .test_oracle_hf import CONFIGS, hf_model, params_from_hf  # noqa: E402  (needs torch)


def batch(config, side, seed=11):
    """ids, targets (-100 on padding) [3, T] and the attention mask (None without padding)."""
    rng = np.random.default_rng(seed)
    T = config.n_ctx
    ids, targets = rng.integers(0, config.n_vocab, (2, 3, T))
    if side == "none":
        return ids, targets, None
    lengths = np.array([T, 9, 2])
    slots = np.arange(T)[None, :]
    mask = (slots >= T - lengths[:, None]) if side == "left" else (slots < lengths[:, None])
    return ids, np.where(mask, targets, -100), mask.astype(np.int64)


def oracle_loss_and_grads(config, model, ids, targets, mask):
    """HF forward, float64 cross-entropy, autograd.  Positions as ours: cumsum(mask) - 1."""
    positions = None if mask is None else torch.tensor(np.where(mask == 0, 0, np.cumsum(mask, -1) - 1))
    model.zero_grad()
    logits = model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                   position_ids=positions).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.n_vocab), torch.tensor(targets).reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    grads = params_from_state(config, dict(model.named_parameters()), convert=lambda p: p.grad.numpy())
    return float(loss.detach()), R.flatten_params(grads)


def gradient_table(arch, side):
    """[(name, Comparison, max|reference|)] for every parameter tensor, and the two losses."""
    config = CONFIGS[arch]
    model = hf_model(config, torch.float64).train()  # train(): every dropout is p = 0 in hf_model
    params = params_from_hf(config, model)
    ids, targets, mask = batch(config, side)
    loss, grads = R.loss_and_grads(config, params, ids, targets, attention_mask=mask)
    their_loss, their_grads = oracle_loss_and_grads(config, model, ids, targets, mask)
    bound = backward_bound(config, np.float64, ids.size)
    rows = [(name, compare(f"{arch} d {name}", g, their_grads[name], bound), float(np.abs(their_grads[name]).max()))
            for name, g in R.flatten_params(grads).items()]
    return config, (loss, their_loss), rows


@pytest.mark.parametrize("side", ["none", "left", "right"])
@pytest.mark.parametrize("arch", CONFIGS)
def test_every_gradient_equals_autograd_in_float64(arch, side):
    config, (loss, their_loss), rows = gradient_table(arch, side)
    assert abs(loss - their_loss) <= reorder_bound(config, np.float64).allowed(their_loss)
    failed = [c.describe() for _, c, _ in rows if not c.passed]
    assert not failed, "\n".join(failed)
    assert all(scale > 0 for _, _, scale in rows), "a parameter got no gradient: the comparison would be empty"
    # backward_bound is a relative error model; Bound.allowed floors the scale at 1, which for
    # gradients of order 1e-3..1e-1 loosens it 10-1000x.  Hold each tensor to its own scale too.
    bound = rows[0][1].bound
    loose = [f"{name}: {c.max_abs:.3g} > {bound.value:.3g} x max|grad| {scale:.3g}"
             for name, c, scale in rows if c.max_abs > bound.value * scale]
    assert not loose, "\n".join(loose)


def main():
    for arch in CONFIGS:
        for side in ("none", "left", "right"):
            config, (loss, their_loss), rows = gradient_table(arch, side)
            print(f"\n{arch}, padding {side}: loss {loss:.15f} vs HF {their_loss:.15f}; "
                  f"allowed {rows[0][1].allowed:.2g} ({rows[0][1].bound.reason})")
            print(f"{'tensor':26s} {'max|grad|':>10s} {'max abs err':>12s} {'err/max|grad|':>14s}")
            for name, c, scale in rows:
                print(f"{name:26s} {scale:10.3g} {c.max_abs:12.2e} {c.max_abs / scale:14.2e}")


if __name__ == "__main__":
    main()
