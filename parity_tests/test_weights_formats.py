"""weights.load on every on-disk format: identical arrays, identical logits, round trips.

Each fixture is a tiny random model (every parameter drawn, biases and LayerNorms included)
written in the exact on-disk layout by parity_tests/checkpoint_writers.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import ref_numpy as R
import weights
from gptspec.compare import assert_close
from gptspec.tolerances import reorder_bound
from weights import openai_gpt1
from weights.hf_names import hf_name

from . import checkpoint_writers as W
from .conftest import require_reference

CONFIGS = {
    "gpt2": R.GPTConfig(arch="gpt2", n_vocab=53, n_ctx=12, n_embd=16, n_head=2, n_layer=2),
    "gpt1": R.GPTConfig(arch="gpt1", n_vocab=53, n_ctx=12, n_embd=16, n_head=4, n_layer=2),
}
IDS = np.random.default_rng(3).integers(0, 53, size=(2, 12))


def params_of(arch):
    return R.init_params(CONFIGS[arch], seed=11, random_biases=True)


def writers(arch):
    """name -> function(folder, config, params) writing that format."""
    common = {
        "hf-hub-names": lambda d, c, p: W.write_hf(d, c, p),
        "hf-prefixed-with-mask-buffers": lambda d, c, p: W.write_hf(d, c, p, prefix="transformer.", mask_buffers=True),
        "hf-sharded": lambda d, c, p: W.write_hf(d, c, p, n_shards=3),
        "weights.save-safetensors": lambda d, c, p: weights.save(p, c, d, format="safetensors"),
    }
    if arch == "gpt2":
        return {"openai-tf": W.write_openai_gpt2,
                "openai-tf-3-shards": lambda d, c, p: W.write_openai_gpt2(d, c, p, n_shards=3), **common}
    return {"openai-gpt1-release": W.write_openai_gpt1, **common}


CASES = [(arch, name) for arch in CONFIGS for name in writers(arch)]


def assert_identical(expected: dict, loaded: dict) -> None:
    flat_expected, flat_loaded = R.flatten_params(expected), R.flatten_params(loaded)
    assert list(flat_loaded) == list(flat_expected)
    for name, array in flat_expected.items():
        assert flat_loaded[name].dtype == np.float32, name
        np.testing.assert_array_equal(flat_loaded[name], array, err_msg=name)


@pytest.mark.parametrize("arch, writer", CASES)
def test_every_format_loads_identical_arrays_and_logits(tmp_path, arch, writer):
    config, params = CONFIGS[arch], params_of(arch)
    writers(arch)[writer](tmp_path, config, params)
    loaded_config, loaded = weights.load(tmp_path, check_finite=True)
    assert loaded_config == config
    assert_identical(params, loaded)
    # The loaders change no value (bit for bit, above), so the loaded model computes the same
    # function.  Not asserted bit-identical: the loaded arrays are other buffers (memory-mapped,
    # 16-byte aligned where fresh ones are 64) and a BLAS may block differently by alignment
    # (MKL does, without MKL_CBWR), so the logits are held to the same-computation bound.
    expected_logits, _ = R.forward(config, params, IDS)
    logits, _ = R.forward(loaded_config, loaded, IDS)
    assert_close(f"{arch} {writer}: logits of the loaded model", logits, expected_logits,
                 reorder_bound(config, expected_logits.dtype))


@pytest.mark.parametrize("arch", CONFIGS)
def test_mindspore_checkpoint_round_trip(tmp_path, arch):
    pytest.importorskip("mindspore", reason="mindspore extra not installed")
    config, params = CONFIGS[arch], params_of(arch)
    weights.save(params, config, tmp_path, format="mindspore")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gptspec.json", "model.ckpt"]
    loaded_config, loaded = weights.load(tmp_path)
    assert loaded_config == config
    assert_identical(params, loaded)


def test_mindspore_names_are_our_flat_names(tmp_path):
    """The .ckpt holds exactly ref_numpy's flat names -- the names ms_backend.GPTModel gives its Parameters."""
    mindspore = pytest.importorskip("mindspore", reason="mindspore extra not installed")
    config, params = CONFIGS["gpt2"], params_of("gpt2")
    weights.save(params, config, tmp_path, format="mindspore")
    stored = mindspore.load_checkpoint(str(tmp_path / "model.ckpt"))
    assert set(stored) == set(R.expected_shapes(config))


@pytest.mark.parametrize("arch", CONFIGS)
def test_saved_safetensors_load_in_transformers(tmp_path, arch):
    """weights.save writes a folder transformers' from_pretrained takes; its logits match the spec."""
    torch = pytest.importorskip("torch", reason="oracle extra (torch) not installed")
    transformers = pytest.importorskip("transformers", reason="oracle extra (transformers) not installed")
    from gptspec.compare import assert_close
    from gptspec.tolerances import HF_FLOAT32_RELATIVE

    config, params = CONFIGS[arch], params_of(arch)
    weights.save(params, config, tmp_path, format="safetensors")
    cls = transformers.GPT2LMHeadModel if arch == "gpt2" else transformers.OpenAIGPTLMHeadModel
    model = cls.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = model(torch.tensor(IDS)).logits.numpy()
    ours, _ = R.forward(config, params, IDS)
    assert_close(f"{arch} saved safetensors: HF vs spec logits", theirs, ours, HF_FLOAT32_RELATIVE)


@pytest.mark.parametrize("arch", CONFIGS)
def test_save_load_save_is_byte_identical(tmp_path, arch):
    config, params = CONFIGS[arch], params_of(arch)
    weights.save(params, config, tmp_path / "a")
    weights.save(weights.load(tmp_path / "a")[1], config, tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_gpt1_release_order_reproduces_the_real_146_shapes():
    """Our GPT-1 order, applied to the real model's config, gives exactly the published shapes
    (with the release's leading 1 on the conv1d weights)."""
    shapes = json.loads(require_reference("openai-gpt", "params_shapes.json").read_text())
    config = R.GPTConfig.from_name("openai-gpt")
    expected = R.expected_shapes(config)
    ours = [[1, *expected[n]] if n.startswith("blocks.") and n.endswith(".w") else list(expected[n])
            for n in openai_gpt1.release_order(config.n_layer)]
    assert len(shapes) == 146
    assert ours == shapes


def test_gpt1_config_read_from_the_real_shapes_file(tmp_path):
    """Without hparams.json the release's shapes give the published GPT-1 config (n_head = 12)."""
    shapes = openai_gpt1.read_shapes(require_reference("openai-gpt"))
    assert openai_gpt1.read_config(tmp_path, shapes) == R.GPTConfig.from_name("openai-gpt")


def test_a_name_resolves_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path))
    config, params = CONFIGS["gpt2"], params_of("gpt2")
    W.write_hf(tmp_path / "hf" / "distilgpt2", config, params)
    loaded_config, loaded = weights.load("distilgpt2")
    assert loaded_config == config
    assert_identical(params, loaded)


def test_cli_model_name_loads_cached_weights(tmp_path, monkeypatch, capsys):
    """gptspec.common.load_model's weights.load(args.weights or args.model) path, end to end."""
    from gptspec.cli import main

    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path))
    config, params = CONFIGS["gpt2"], params_of("gpt2")
    W.write_openai_gpt2(tmp_path / "openai" / "gpt2", config, params)
    assert main(["generate", "--model", "gpt2", "--prompt-ids", "1,2", "--max-new-tokens", "3", "--greedy"]) == 0
    expected = R.generate(config, params, [1, 2], 3, greedy=True)
    assert capsys.readouterr().out.splitlines()[1] == "generated: " + " ".join(map(str, expected[2:].tolist()))


def test_gpt_model_checkpoint_and_weights_save_are_interchangeable(tmp_path):
    """mindspore.save_checkpoint(GPTModel) + gptspec.json loads through weights.load, and the file
    weights.save writes loads into a GPTModel with every parameter matched."""
    mindspore = pytest.importorskip("mindspore", reason="mindspore extra not installed")
    import ms_backend
    from weights import mindspore_ckpt

    config, params = CONFIGS["gpt2"], params_of("gpt2")
    model = ms_backend.GPTModel(config, params)
    mindspore.save_checkpoint(model, str(tmp_path / "model.ckpt"))
    mindspore_ckpt.write_marker(config, tmp_path)
    assert_identical(params, weights.load(tmp_path)[1])

    weights.save(params, config, tmp_path / "saved", format="mindspore")
    fresh = ms_backend.GPTModel(config, R.init_params(config, seed=99))
    not_loaded = mindspore.load_param_into_net(fresh, mindspore.load_checkpoint(str(tmp_path / "saved" / "model.ckpt")))
    assert not any(not_loaded)  # (param_not_load, ckpt_not_load) both empty
    assert_identical(params, R.unflatten_params({p.name: p.asnumpy() for p in fresh.get_parameters()}))


@pytest.mark.parametrize("arch", CONFIGS)
def test_folder_written_by_transformers_save_pretrained_loads(tmp_path, arch):
    """The real writer: transformers' own save_pretrained output (its names, its config.json)."""
    torch = pytest.importorskip("torch", reason="oracle extra (torch) not installed")
    transformers = pytest.importorskip("transformers", reason="oracle extra (transformers) not installed")
    config = CONFIGS[arch]
    common = dict(vocab_size=config.n_vocab, n_positions=config.n_ctx, n_embd=config.n_embd,
                  n_layer=config.n_layer, n_head=config.n_head)
    if arch == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**common))
    else:
        model = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**common))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded_config, loaded = weights.load(tmp_path)
    assert loaded_config == config
    state = model.state_dict()
    for name, array in R.flatten_params(loaded).items():
        np.testing.assert_array_equal(array, state[hf_name(name, arch)].numpy(), err_msg=name)
