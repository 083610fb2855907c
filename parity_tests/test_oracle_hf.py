"""The spec against an independent oracle: Hugging Face transformers on PyTorch.

Random GPT2LMHeadModel / OpenAIGPTLMHeadModel (small, eval mode, eager attention) with every
parameter randomised, their state dicts mapped into our params dict by weights.hf, and
the logits compared -- in float64 (the exact check) and float32 -- with and without a
left-padded batch.
"""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.tolerances import HF_FLOAT32_RELATIVE, reorder_bound
from weights.hf import params_from_state

from .strategies import left_padding_mask

torch = pytest.importorskip("torch", reason="oracle extra (torch) not installed")
transformers = pytest.importorskip("transformers", reason="oracle extra (transformers) not installed")
pytestmark = pytest.mark.oracle

from gptspec.backends.hf import build_model  # noqa: E402  (needs torch)

CONFIGS = {
    "gpt2": R.GPTConfig(arch="gpt2", n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=3),
    "gpt1": R.GPTConfig(arch="gpt1", n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=3),
}


def hf_model(config: R.GPTConfig, dtype):
    """The hf backend's model (gptspec.backends.hf.build_model: eager, no dropout) with every
    parameter randomised here, biases and LayerNorms included, in torch `dtype`."""
    model = build_model(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if name.endswith("bias") or "ln" in name else 0.05)
                    + (1.0 if "ln" in name and name.endswith("weight") else 0.0))
    return model.to(dtype).eval()


def params_from_hf(config: R.GPTConfig, model) -> dict:
    """Our params dict from the HF state dict, by weights.hf's name mapping (no transposes)."""
    params = params_from_state(config, model.state_dict(), convert=lambda t: t.detach().cpu().numpy())
    R.check_params(config, params)
    return params


def run_both(config, dtype, ids, mask=None):
    model = hf_model(config, {np.float64: torch.float64, np.float32: torch.float32}[dtype])
    params = params_from_hf(config, model)
    ours, _ = R.forward(config, params, ids, attention_mask=mask)
    # Positions computed here, independently of the spec: HF's own default (0..T-1) without a
    # mask, and HF's generate() rule cumsum(mask) - 1 (padding slots set to 1) with one.
    positions = None if mask is None else torch.tensor(np.where(mask == 0, 1, np.cumsum(mask, -1) - 1))
    with torch.no_grad():
        theirs = model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                       position_ids=positions).logits.numpy()
    return ours, theirs


IDS = np.random.default_rng(7).integers(0, 61, size=(3, 16))
MASK = left_padding_mask([16, 9, 1], 16)


@pytest.mark.parametrize("arch", CONFIGS)
def test_logits_equal_hf_in_float64(arch):
    config = CONFIGS[arch]
    ours, theirs = run_both(config, np.float64, IDS)
    assert_close(f"{arch} logits vs HF (float64)", ours, theirs, reorder_bound(config, np.float64))


@pytest.mark.parametrize("arch", CONFIGS)
def test_logits_equal_hf_in_float32(arch):
    ours, theirs = run_both(CONFIGS[arch], np.float32, IDS)
    assert_close(f"{arch} logits vs HF (float32)", ours, theirs, HF_FLOAT32_RELATIVE)


@pytest.mark.parametrize("arch", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_left_padded_batch_equals_hf(arch, dtype):
    config = CONFIGS[arch]
    ours, theirs = run_both(config, dtype, IDS, MASK)
    real = MASK.astype(bool)  # HF's outputs at padding positions are not defined the same way
    bound = reorder_bound(config, dtype) if dtype == np.float64 else HF_FLOAT32_RELATIVE
    assert_close(f"{arch} padded logits vs HF ({np.dtype(dtype).name})", ours[real], theirs[real], bound)
