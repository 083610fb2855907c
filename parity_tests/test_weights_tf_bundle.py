"""The pure-Python TensorFlow checkpoint reader: CRC-32C, the table format, the bundle protos.

Fixtures come from the small writer in checkpoint_writers.py; where TensorFlow is installed
the same checks run on a checkpoint TensorFlow wrote itself.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ref_numpy as R
import weights
from weights import crc32c
from weights.sstable import read_table
from weights.tf_bundle import TensorBundle, parse_proto

from . import checkpoint_writers as W


def crc_bytewise(data: bytes) -> int:
    """The textbook bit-at-a-time CRC-32C, independent of the module's tables and lanes."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_published_check_values():
    # RFC 3720 (iSCSI) B.4 test vectors and the standard check value of "123456789".
    assert crc32c.value(b"123456789") == 0xE3069283
    assert crc32c.value(bytes(32)) == 0x8A9136AA
    assert crc32c.value(b"\xff" * 32) == 0x62A8AB43
    assert crc32c.value(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("max_lanes, chunk", [(1 << 16, 1 << 24), (8, 64)])
def test_crc32c_lanes_equal_the_bytewise_crc(monkeypatch, max_lanes, chunk):
    """Inputs of 32 bytes and more run as NumPy lanes joined by the zero-bytes operator: check
    sizes around every switch (odd sizes, ragged tails, several chunks with small settings)."""
    monkeypatch.setattr(crc32c, "_MAX_LANES", max_lanes)
    monkeypatch.setattr(crc32c, "_CHUNK", chunk)
    rng = np.random.default_rng(0)
    for size in (0, 1, 31, 32, 33, 34, 63, 64, 65, 1000, 4099, 65536 + 17):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32c.value(data) == crc_bytewise(data), size
        assert crc32c.value(np.frombuffer(data, np.uint8)) == crc_bytewise(data), size


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32c_extend_and_mask(a, b):
    assert crc32c.extend(crc32c.value(a), b) == crc32c.value(a + b) == crc_bytewise(a + b)
    assert crc32c.unmask(crc32c.mask(crc32c.value(a))) == crc32c.value(a)


@given(st.dictionaries(st.binary(min_size=1, max_size=12), st.binary(max_size=20), max_size=60),
       st.integers(1, 9))
def test_table_reader_returns_every_entry_in_order(tmp_path_factory, entries, per_block):
    """Prefix-compressed keys, restart points, several data blocks: the reader sees it all."""
    path = tmp_path_factory.mktemp("table") / "t.index"
    items = sorted(entries.items())
    W.write_table(path, items, entries_per_block=per_block)
    assert read_table(path) == items


def test_proto_parser_reads_every_wire_type():
    record = (W.field_varint(1, 300) + W.field_bytes(2, b"abc") + W.field_fixed32(6, 0xDEADBEEF)
              + W.field_varint(3, 2) + bytes([4 << 3 | 1]) + (7).to_bytes(8, "little"))
    assert parse_proto(record, "test") == {1: [300], 2: [b"abc"], 6: [0xDEADBEEF], 3: [2], 4: [7]}


def test_bundle_entries_dtypes_shapes_and_shards(tmp_path):
    tensors = {"a/scalar": np.float32(3.5), "b/matrix": np.arange(12, dtype=np.float64).reshape(3, 4),
               "c/ints": np.arange(5, dtype=np.int32), "d/half": np.ones((2, 2), np.float16)}
    W.write_tensor_bundle(tmp_path / "x.ckpt", {k: np.asarray(v) for k, v in tensors.items()}, n_shards=2)
    bundle = TensorBundle(tmp_path / "x.ckpt")
    assert bundle.n_shards == 2 and {e.shard for e in bundle.entries.values()} == {0, 1}
    for name, value in tensors.items():
        array = bundle.read(name)
        bundle.verify(name)
        assert array.dtype == np.asarray(value).dtype and array.shape == np.shape(value)
        np.testing.assert_array_equal(array, value)


def test_tensor_crc_catches_what_offsets_cannot(tmp_path):
    """A data file whose bytes were swapped *between* tensors of equal size keeps every
    offset valid; only the per-tensor CRC notices."""
    config = R.GPTConfig(arch="gpt2", n_vocab=16, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    folder = W.write_openai_gpt2(tmp_path, config, R.init_params(config, 1, random_biases=True))
    bundle = TensorBundle(folder / "model.ckpt")
    first, second = bundle.entries["model/h0/ln_1/b"], bundle.entries["model/h0/ln_1/g"]
    data = folder / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    a, b = slice(first.offset, first.offset + first.size), slice(second.offset, second.offset + second.size)
    raw[a], raw[b] = raw[b], raw[a]
    data.write_bytes(bytes(raw))
    with pytest.raises(weights.CheckpointError, match="CRC mismatch for tensor 'model/h0/ln_1/[gb]'"):
        weights.load(folder)


def test_checkpoint_written_by_tensorflow_itself(tmp_path):
    """Cross-check against the real writer: a checkpoint saved by TensorFlow's SaveV2 op loads, and
    TensorFlow reads the test writer's files."""
    tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (the reader needs none; this "
                                                  "cross-check runs only where it is)")
    config = R.GPTConfig(arch="gpt2", n_vocab=16, n_ctx=8, n_embd=8, n_head=2, n_layer=2)
    params = R.init_params(config, 4, random_biases=True)
    folder = tmp_path / "tf"
    folder.mkdir()
    W.write_openai_gpt2(tmp_path / "ours", config, params)  # for hparams.json
    (folder / "hparams.json").write_bytes((tmp_path / "ours" / "hparams.json").read_bytes())
    tensors = W.gpt2_tf_tensors(params)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=list(tensors),
                      shape_and_slices=[""] * len(tensors), tensors=[tf.constant(t) for t in tensors.values()])
    loaded_config, loaded = weights.load(folder)
    assert loaded_config == config
    flat, loaded_flat = R.flatten_params(params), R.flatten_params(loaded)
    for name in flat:
        np.testing.assert_array_equal(loaded_flat[name], flat[name], err_msg=name)
    # ... and TensorFlow reads our writer's files.
    W.write_openai_gpt2(tmp_path / "ours2", config, params, n_shards=1)
    reader = tf.train.load_checkpoint(str(tmp_path / "ours2" / "model.ckpt"))
    for name, array in tensors.items():
        np.testing.assert_array_equal(reader.get_tensor(name), array)


@pytest.mark.skipif(not os.environ.get("GPTSPEC_REAL_GPT2"), reason="set GPTSPEC_REAL_GPT2 to a folder holding "
                    "OpenAI's real 124M files (gptspec fetch gpt2) to check the reader on them")
def test_real_openai_gpt2_checkpoint():
    config, params = weights.load(os.environ["GPTSPEC_REAL_GPT2"], check_finite=True)
    assert config == R.GPTConfig.from_name("gpt2")
    logits, _ = R.forward(config, params, [[464, 2068, 7586, 21831]])  # "The quick brown fox"
    assert logits.shape == (1, 4, 50257) and np.isfinite(logits).all()


@pytest.mark.parametrize("name, index_size, data_size", [
    ("gpt2", 5215, 497759232), ("gpt2-medium", 10399, 1419292672),  # OpenAI's files (weights/known_files.json)
])
def test_our_format_model_reproduces_the_size_of_openais_real_files(tmp_path, name, index_size, data_size):
    """Lay out the index of the real 124M/355M checkpoints as TensorFlow does (one block, restart
    every 16 keys, proto3 leaving zero fields out, "n" as the last separator): its size is exactly
    the published size of OpenAI's model.ckpt.index, and the tensors fill exactly the published
    size of the data file -- evidence that the format is understood down to the byte."""
    import json
    from pathlib import Path

    from weights import fetch

    config = R.GPTConfig.from_name(name)
    shapes = {W.tf_variable_name(ours): (1, *shape) if ours.startswith("blocks.") and ours.endswith(".w") else shape
              for ours, shape in R.expected_shapes(config).items()}
    placed, offset = [], 0
    for variable in sorted(shapes):  # TensorFlow writes the tensors in name order
        size = 4 * int(np.prod(shapes[variable]))  # float32
        placed.append((variable, 1, shapes[variable], 0, offset, size, 0xFFFFFFFF))  # (CRC: fixed32, any value)
        offset += size
    W.write_table(tmp_path / "model.ckpt.index", W.index_records(placed, 1), entries_per_block=10_000)
    published = json.loads((Path(fetch.__file__).with_name("known_files.json")).read_text())["files"][f"openai/{name}"]
    assert published["model.ckpt.index"]["size"] == index_size and published["model.ckpt.data-00000-of-00001"][
        "size"] == data_size
    assert (tmp_path / "model.ckpt.index").stat().st_size == index_size
    assert offset == data_size
    bundle = TensorBundle(tmp_path / "model.ckpt")
    assert {n: e.shape for n, e in bundle.entries.items()} == shapes


@given(st.lists(st.sampled_from([b"model/h", b"attn/c_", b"\x00\x01", b"x", b"abcdefgh" * 9]), max_size=80),
       st.binary(max_size=40))
def test_snappy_round_trip(pieces, noise):
    """Repetitive data (long matches, overlapping copies) and noise (literals) decompress exactly."""
    from weights import snappy

    data = b"".join(pieces) + noise + b"".join(reversed(pieces))
    compressed = W.snappy_compress(data)
    assert snappy.decompress(compressed, "test") == data
    if len(data) > 200 and len(set(pieces)) < 3:
        assert len(compressed) < len(data)  # the writer really emitted copies


def test_snappy_compressed_index_loads(tmp_path):
    config = R.GPTConfig(arch="gpt2", n_vocab=16, n_ctx=8, n_embd=8, n_head=2, n_layer=2)
    params = R.init_params(config, 6, random_biases=True)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    W.write_openai_gpt2(tmp_path / "plain", config, params)
    (folder / "hparams.json").write_bytes((tmp_path / "plain" / "hparams.json").read_bytes())
    W.write_tensor_bundle(folder / "model.ckpt", W.gpt2_tf_tensors(params))
    index = folder / "model.ckpt.index"
    entries = read_table(index)
    W.write_table(index, entries, snappy=True)
    assert index.stat().st_size < (tmp_path / "plain" / "model.ckpt.index").stat().st_size
    _, loaded = weights.load(folder)
    np.testing.assert_array_equal(loaded["blocks"][1]["attn"]["c_attn"]["w"], params["blocks"][1]["attn"]["c_attn"]["w"])


def test_corrupt_snappy_block_is_reported():
    from weights import snappy

    with pytest.raises(weights.CheckpointError, match="block 7: corrupt Snappy data"):
        snappy.decompress(W.varint(10) + bytes([2 << 2 | 2]) + (5).to_bytes(2, "little"), "block 7")
    with pytest.raises(weights.CheckpointError, match="header says 10"):
        snappy.decompress(W.varint(10) + bytes([0]) + b"a", "block 7")
