"""Every bad checkpoint gives an error that names the file and, where there is one, the tensor."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import ref_numpy as R
import weights
from weights import CheckpointError

from . import checkpoint_writers as W

CONFIG = R.GPTConfig(arch="gpt2", n_vocab=29, n_ctx=8, n_embd=8, n_head=2, n_layer=2)
GPT1 = CONFIG.replace(arch="gpt1")


def params_of(config=CONFIG):
    return R.init_params(config, seed=5, random_biases=True)


def expect(error_type, folder, *fragments, **load_options):
    """weights.load(folder) raises error_type with every fragment in its message."""
    with pytest.raises(error_type) as info:
        weights.load(folder, **load_options)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in: {message}"
    return message


@pytest.fixture
def tf_dir(tmp_path):
    return W.write_openai_gpt2(tmp_path / "tf", CONFIG, params_of())


# ---------------------------------------------------------------------- TensorFlow GPT-2 ---

@pytest.mark.parametrize("missing", ["model.ckpt.index", "model.ckpt.data-00000-of-00001", "hparams.json"])
def test_tf_missing_file(tf_dir, missing):
    (tf_dir / missing).unlink()
    expect(FileNotFoundError, tf_dir, tf_dir / missing)


def test_tf_missing_shard_of_several(tmp_path):
    folder = W.write_openai_gpt2(tmp_path, CONFIG, params_of(), n_shards=3)
    (folder / "model.ckpt.data-00001-of-00003").unlink()
    expect(FileNotFoundError, folder, "model.ckpt.data-00001-of-00003", "shard 1 of 3")


def test_tf_truncated_data_file(tf_dir):
    data = tf_dir / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-10])
    # Tensors are laid out in name order; the last one is model/wte.
    expect(CheckpointError, tf_dir, data, "is truncated", "'model/wte'")


def test_tf_bad_index_magic(tf_dir):
    index = tf_dir / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-8] + b"\x00" * 8)
    expect(CheckpointError, tf_dir, index, "bad table magic")


def test_tf_corrupt_index_block_crc(tf_dir):
    index = tf_dir / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0xFF  # inside the first data block
    index.write_bytes(bytes(raw))
    expect(CheckpointError, tf_dir, index, "CRC mismatch in the block at offset 0")


def test_tf_corrupt_tensor_data_crc(tf_dir):
    data = tf_dir / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0x01  # first tensor in name order: model/h0/attn/c_attn/b
    data.write_bytes(bytes(raw))
    expect(CheckpointError, tf_dir, data, "CRC mismatch for tensor 'model/h0/attn/c_attn/b'")
    weights.load(tf_dir, verify_crc=False)  # the check is what caught it


def test_tf_shape_disagrees_with_hparams(tf_dir):
    (tf_dir / "hparams.json").write_text(json.dumps({"n_vocab": 30, "n_ctx": 8, "n_embd": 8, "n_head": 2,
                                                     "n_layer": 2}))
    expect(CheckpointError, tf_dir, "model.ckpt.index", "'model/wte'", "(29, 8)", "(30, 8)")


def test_tf_hparams_missing_a_key(tf_dir):
    (tf_dir / "hparams.json").write_text(json.dumps({"n_vocab": 29, "n_ctx": 8, "n_embd": 8, "n_head": 2}))
    expect(CheckpointError, tf_dir, "hparams.json", "'n_layer'")


def test_tf_unknown_variable(tf_dir):
    tensors = W.gpt2_tf_tensors(params_of())
    tensors["model/global_step"] = np.zeros((), np.int64)
    W.write_tensor_bundle(tf_dir / "model.ckpt", tensors)
    expect(CheckpointError, tf_dir, "model.ckpt.index", "unknown variable(s) 'model/global_step'")


def test_tf_missing_variable(tf_dir):
    tensors = W.gpt2_tf_tensors(params_of())
    del tensors["model/h1/mlp/c_fc/b"]
    W.write_tensor_bundle(tf_dir / "model.ckpt", tensors)
    expect(CheckpointError, tf_dir, "missing tensor(s) 'model/h1/mlp/c_fc/b'")


@pytest.mark.parametrize("code, name", [(14, "DT_BFLOAT16"), (7, "DT_STRING")])
def test_tf_unsupported_dtype_is_named(tmp_path, code, name):
    folder = W.write_openai_gpt2(tmp_path, CONFIG, params_of(), dtype_codes={"model/wpe": code})
    expect(CheckpointError, folder, "tensor 'model/wpe' has dtype " + name)


# ------------------------------------------------------------------------------- GPT-1 ---

@pytest.fixture
def gpt1_dir(tmp_path):
    return W.write_openai_gpt1(tmp_path / "gpt1", GPT1, params_of(GPT1))


def test_gpt1_missing_shard(gpt1_dir):
    (gpt1_dir / "params_7.npy").unlink()
    expect(CheckpointError, gpt1_dir, "has 10 shards", "found 9", "params_6.npy, params_8.npy")


def test_gpt1_extra_shard(gpt1_dir):
    np.save(gpt1_dir / "params_10.npy", np.zeros(3, np.float32))
    expect(CheckpointError, gpt1_dir, "found 11", "params_10.npy")


def test_gpt1_truncated_shard(gpt1_dir):
    np.save(gpt1_dir / "params_9.npy", np.load(gpt1_dir / "params_9.npy")[:-4])
    expect(CheckpointError, gpt1_dir, "shards hold", "(-4)", "params_shapes.json")


def test_gpt1_shard_of_another_dtype(gpt1_dir):
    np.save(gpt1_dir / "params_4.npy", np.load(gpt1_dir / "params_4.npy").astype(np.float64))
    expect(CheckpointError, gpt1_dir, "params_4.npy: dtype float64, but params_0.npy has float32")


def test_gpt1_pickled_shard_is_not_loaded(gpt1_dir):
    np.save(gpt1_dir / "params_3.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    expect(CheckpointError, gpt1_dir, "params_3.npy", "not a readable .npy")


def test_gpt1_shapes_file_with_wrong_count(gpt1_dir):
    shapes = json.loads((gpt1_dir / "params_shapes.json").read_text())
    (gpt1_dir / "params_shapes.json").write_text(json.dumps(shapes[:-1]))
    expect(CheckpointError, gpt1_dir, "params_shapes.json", "lists 25 arrays")


# -------------------------------------------------------------------------- Hugging Face ---

@pytest.fixture
def hf_dir(tmp_path):
    return W.write_hf(tmp_path / "hf", CONFIG, params_of())


def test_hf_shape_disagrees_with_config(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "n_positions": 9, "n_ctx": 9}))
    expect(CheckpointError, hf_dir, "model.safetensors", "'wpe.weight'", "(8, 8)", "(9, 8)")


def test_hf_unknown_tensor(hf_dir):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(hf_dir / "model.safetensors")
    save_file({**tensors, "h.0.attn.rotary.weight": np.zeros(2, np.float32)}, hf_dir / "model.safetensors")
    expect(CheckpointError, hf_dir, "model.safetensors", "unknown tensor 'h.0.attn.rotary.weight'")


def test_hf_untied_head_is_refused(hf_dir):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(hf_dir / "model.safetensors")
    save_file({**tensors, "lm_head.weight": tensors["wte.weight"] + 1}, hf_dir / "model.safetensors")
    expect(CheckpointError, hf_dir, "'lm_head.weight' differs from the token embedding")


def test_hf_truncated_safetensors(hf_dir):
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-16])
    expect(CheckpointError, hf_dir, path, "not a readable safetensors file")


def test_hf_missing_shard(tmp_path):
    folder = W.write_hf(tmp_path, CONFIG, params_of(), n_shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    expect(FileNotFoundError, folder, "model-00002-of-00002.safetensors", "model.safetensors.index.json")


def test_hf_pytorch_pickle_is_refused_with_the_reason(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir / "pytorch_model.bin")
    expect(CheckpointError, hf_dir, "pytorch_model.bin", "can execute arbitrary code", "save_pretrained")


@pytest.mark.parametrize("change, fragment", [
    ({"model_type": "llama"}, "model_type 'llama' is not supported"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"n_inner": 7}, "n_inner=7"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True changes the attention"),
    ({"n_head": 3}, "n_embd (8) must be divisible by n_head (3)"),
])
def test_hf_bad_config(hf_dir, change, fragment):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **change}))
    expect(CheckpointError, hf_dir, "config.json", fragment)


def test_hf_config_not_json(hf_dir):
    (hf_dir / "config.json").write_text("{not json")
    expect(CheckpointError, hf_dir, "config.json", "is not valid JSON")


# ---------------------------------------------------------------------------- any format ---

@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("writer", ["tf", "gpt1", "hf"])
def test_non_finite_weights_are_refused_only_when_asked(tmp_path, writer, bad):
    config = GPT1 if writer == "gpt1" else CONFIG
    params = params_of(config)
    params["blocks"][1]["mlp"]["c_fc"]["w"][2, 3] = bad
    write = {"tf": W.write_openai_gpt2, "gpt1": W.write_openai_gpt1, "hf": W.write_hf}[writer]
    folder = write(tmp_path, config, params)
    weights.load(folder)  # not checked by default: reading every value costs time
    name = {"tf": "'model/h1/mlp/c_fc/w'", "gpt1": "array #", "hf": "'h.1.mlp.c_fc.weight'"}[writer]
    kind = "NaN" if np.isnan(bad) else "Inf"
    expect(CheckpointError, folder, name, "'blocks.1.mlp.c_fc.w'", kind, "first at index [2, 3]", check_finite=True)


def test_folder_in_no_known_format_lists_what_was_looked_for(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"x")
    message = expect(CheckpointError, tmp_path, "not a checkpoint in any known format", "hparams.json",
                     "params_shapes.json", "model.safetensors", "gptspec.json", "holds: weights.pt")
    assert all(re.search(f"Looked for: .*{kind}", message) for kind in ("OpenAI GPT-2", "OpenAI GPT-1",
                                                                         "Hugging Face", "MindSpore"))


def test_unknown_name_and_missing_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSPEC_HOME", str(tmp_path))
    expect(FileNotFoundError, "gpt5", "'gpt5' is neither an existing checkpoint folder nor a model name")
    message = expect(FileNotFoundError, "gpt2-medium", "has not been downloaded", "gptspec fetch gpt2-medium`",
                     "gptspec fetch gpt2-medium --format hf", str(tmp_path / "openai" / "gpt2-medium"))
    assert "GPTSPEC_HOME" in message
    expect(FileNotFoundError, "distilgpt2", "`gptspec fetch distilgpt2 --format hf`")


def test_a_file_instead_of_a_folder(hf_dir):
    expect(FileNotFoundError, hf_dir / "config.json", "is a file", "give the folder")


def test_mindspore_marker_problems(tmp_path):
    pytest.importorskip("mindspore", reason="mindspore extra not installed")
    weights.save(params_of(), CONFIG, tmp_path, format="mindspore")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:-7])
    expect(CheckpointError, tmp_path, ckpt, "MindSpore cannot read it")
    ckpt.unlink()
    expect(FileNotFoundError, tmp_path, ckpt)
    (tmp_path / "gptspec.json").write_text(json.dumps({"format": "mindspore", "config": {"n_embd": -1}}))
    expect(CheckpointError, tmp_path, "gptspec.json", "n_embd must be a positive integer")


def test_mindspore_shape_disagrees_with_config(tmp_path):
    pytest.importorskip("mindspore", reason="mindspore extra not installed")
    weights.save(params_of(), CONFIG, tmp_path, format="mindspore")
    marker = json.loads((tmp_path / "gptspec.json").read_text())
    marker["config"]["n_vocab"] = 31
    (tmp_path / "gptspec.json").write_text(json.dumps(marker))
    expect(CheckpointError, tmp_path, "model.ckpt", "'wte'", "(29, 8)", "(31, 8)")


def test_save_rejects_bad_params_and_format(tmp_path):
    params = params_of()
    with pytest.raises(ValueError, match="format must be one of"):
        weights.save(params, CONFIG, tmp_path, format="onnx")
    params["ln_f"]["g"] = params["ln_f"]["g"][:-1]
    with pytest.raises(ValueError, match=r"params\['ln_f.g'\] has shape"):
        weights.save(params, CONFIG, tmp_path / "x")
