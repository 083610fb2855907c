"""GPTConfig presets and validation; the params dict: init, checks, flatten/unflatten."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy
from ref_numpy import GPTConfig

TINY = GPTConfig(arch="gpt2", n_vocab=11, n_ctx=8, n_embd=12, n_head=3, n_layer=2)


@pytest.mark.parametrize("name, arch, vocab, ctx, embd, heads, layers, n_params", [
    ("openai-gpt", "gpt1", 40478, 512, 768, 12, 12, 116_534_784),
    ("gpt2", "gpt2", 50257, 1024, 768, 12, 12, 124_439_808),
    ("gpt2-medium", "gpt2", 50257, 1024, 1024, 16, 24, 354_823_168),
    ("gpt2-large", "gpt2", 50257, 1024, 1280, 20, 36, 774_030_080),
    ("gpt2-xl", "gpt2", 50257, 1024, 1600, 25, 48, 1_557_611_200),
    ("distilgpt2", "gpt2", 50257, 1024, 768, 12, 6, 81_912_576),
])
def test_presets_have_the_published_sizes(name, arch, vocab, ctx, embd, heads, layers, n_params):
    config = GPTConfig.from_name(name)
    assert (config.arch, config.n_vocab, config.n_ctx, config.n_embd, config.n_head, config.n_layer) == (
        arch, vocab, ctx, embd, heads, layers)
    assert config.layer_norm_epsilon == 1e-5
    # Parameter counts as Hugging Face reports them (tied output layer counted once).
    assert sum(np.prod(s) for s in ref_numpy.expected_shapes(config).values()) == n_params


@pytest.mark.parametrize("changes, field", [
    (dict(n_embd=10, n_head=3), "n_embd"),
    (dict(n_vocab=0), "n_vocab"),
    (dict(n_ctx=-1), "n_ctx"),
    (dict(n_layer=2.0), "n_layer"),
    (dict(n_head=True), "n_head"),
    (dict(arch="gpt3"), "arch"),
    (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
])
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TINY.replace(**changes)


def test_unknown_names_and_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown model name 'gpt5'.*gpt2-medium"):
        GPTConfig.from_name("gpt5")
    with pytest.raises(ValueError, match="unknown GPTConfig field.*n_positions"):
        GPTConfig.from_dict({**TINY.to_dict(), "n_positions": 8})
    assert GPTConfig.from_dict(TINY.to_dict()) == TINY


def test_init_params_is_deterministic_and_follows_the_gpt2_init():
    a = ref_numpy.init_params(TINY, seed=3)
    b = ref_numpy.init_params(TINY, seed=3)
    c = ref_numpy.init_params(TINY, seed=4)
    fa, fb, fc = (ref_numpy.flatten_params(p) for p in (a, b, c))
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert not np.array_equal(fa["wte"], fc["wte"])
    ref_numpy.check_params(TINY, a)
    assert fa["wte"].dtype == np.float32
    assert np.all(fa["blocks.0.ln_1.g"] == 1) and np.all(fa["blocks.0.attn.c_attn.b"] == 0)
    # Residual projections are scaled down by 1/sqrt(2 n_layer): compare their std on a big model.
    big = GPTConfig(n_vocab=8, n_ctx=8, n_embd=256, n_head=4, n_layer=8)
    flat = ref_numpy.flatten_params(ref_numpy.init_params(big, seed=0))
    assert flat["blocks.0.mlp.c_fc.w"].std() == pytest.approx(0.02, rel=0.02)
    assert flat["blocks.0.mlp.c_proj.w"].std() == pytest.approx(0.02 / 4, rel=0.02)
    assert flat["wpe"].std() == pytest.approx(0.01, rel=0.05)


def test_float32_and_float64_inits_hold_the_same_numbers():
    p32 = ref_numpy.flatten_params(ref_numpy.init_params(TINY, 0, dtype=np.float32, random_biases=True))
    p64 = ref_numpy.flatten_params(ref_numpy.init_params(TINY, 0, dtype=np.float64, random_biases=True))
    assert all(np.array_equal(p32[k].astype(np.float64), p64[k]) for k in p32)
    assert p64["blocks.1.ln_2.g"].std() > 0  # random_biases randomises norms and biases too


def test_gpt1_has_no_final_norm():
    gpt1 = TINY.replace(arch="gpt1")
    assert "ln_f.g" not in ref_numpy.expected_shapes(gpt1)
    assert "ln_f" not in ref_numpy.init_params(gpt1)


def test_flatten_unflatten_roundtrip():
    params = ref_numpy.init_params(TINY, 0)
    again = ref_numpy.unflatten_params(ref_numpy.flatten_params(params))
    ref_numpy.check_params(TINY, again)
    assert isinstance(again["blocks"], list) and len(again["blocks"]) == 2
    with pytest.raises(ValueError, match="without gaps"):
        ref_numpy.unflatten_params({"blocks.0.ln_1.g": np.ones(2), "blocks.2.ln_1.g": np.ones(2)})


def test_check_params_names_the_first_problem():
    params = ref_numpy.init_params(TINY, 0)
    params["blocks"][1]["mlp"]["c_fc"]["w"] = np.zeros((12, 47), np.float32)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.c_fc\.w.*\(12, 47\).*\(12, 48\)"):
        ref_numpy.check_params(TINY, params)
    params = ref_numpy.init_params(TINY, 0)
    del params["ln_f"]
    with pytest.raises(ValueError, match="missing 'ln_f.g'"):
        ref_numpy.check_params(TINY, params)
    params = ref_numpy.init_params(TINY, 0)
    params["extra"] = np.zeros(3)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        ref_numpy.check_params(TINY, params)
    params = ref_numpy.init_params(TINY, 0)
    params["wpe"] = params["wpe"].astype(np.float64)
    with pytest.raises(ValueError, match="wpe.*float64.*one dtype"):
        ref_numpy.check_params(TINY, params)
    with pytest.raises(ValueError, match="missing 'blocks.1"):
        ref_numpy.check_params(TINY.replace(n_layer=3), ref_numpy.init_params(TINY.replace(n_layer=1), 0))
