"""The spec against an independent oracle: Hugging Face transformers on PyTorch.

Random GPT2LMHeadModel / OpenAIGPTLMHeadModel (small, eval mode, eager attention) with every
parameter randomised, their state dicts mapped into our params dict by weights.hf_names, and
the logits compared -- in float64 (the exact check) and float32 -- with and without a
left-padded batch.
"""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.compare import assert_close
from gptspec.tolerances import HF_FLOAT32_RELATIVE, reorder_bound
from weights.hf_names import hf_name

from .strategies import left_padding_mask

torch = pytest.importorskip("torch", reason="oracle extra (torch) not installed")
transformers = pytest.importorskip("transformers", reason="oracle extra (transformers) not installed")
pytestmark = pytest.mark.oracle

CONFIGS = {
    "gpt2": R.GPTConfig(arch="gpt2", n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=3),
    "gpt1": R.GPTConfig(arch="gpt1", n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=3),
}


def hf_model(config: R.GPTConfig, dtype):
    common = dict(vocab_size=config.n_vocab, n_positions=config.n_ctx, n_embd=config.n_embd,
                  n_layer=config.n_layer, n_head=config.n_head, layer_norm_epsilon=config.layer_norm_epsilon,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    if config.arch == "gpt2":
        hf_config = transformers.GPT2Config(activation_function="gelu_new", bos_token_id=0, eos_token_id=0,
                                            **common)
        model = transformers.GPT2LMHeadModel(hf_config)
    else:
        model = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(afn="gelu", **common))
    torch.manual_seed(0)
    with torch.no_grad():  # randomise everything, biases and LayerNorms included
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if name.endswith("bias") or "ln" in name else 0.05)
                    + (1.0 if "ln" in name and name.endswith("weight") else 0.0))
    return model.to(dtype).eval()


def params_from_hf(config: R.GPTConfig, model) -> dict:
    """Our params dict from an HF state dict, by name -- no transposes (Conv1D is [in, out])."""
    state = model.state_dict()
    flat = {name: state[hf_name(name, config.arch)].detach().cpu().numpy()
            for name in R.expected_shapes(config)}
    params = R.unflatten_params(flat)
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
