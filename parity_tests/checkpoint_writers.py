"""Small writers of each on-disk checkpoint format, for test fixtures.

They are written from the format descriptions (TensorFlow's table.cc/tensor_bundle.proto,
the GPT-1 release's train.py, Hugging Face's naming), independently of weights/'s readers,
so a reader bug does not cancel out against the same bug in a shared helper.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

import ref_numpy as R
from weights import crc32c
from weights.hf_names import hf_name

# ---------------------------------------------------------------- protobuf + LevelDB table ---

TABLE_MAGIC = 0xDB4775248B80FB57
DT_CODES = {np.dtype("<f4"): 1, np.dtype("<f8"): 2, np.dtype("<i4"): 3, np.dtype("<i8"): 9, np.dtype("<f2"): 19}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    """A varint field; zero is left out, as proto3 serializers (and so TensorFlow) do."""
    return varint(number << 3) + varint(value) if value else b""


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<I", value)


def entry_proto(dtype_code: int, shape, shard: int, offset: int, size: int, masked_crc: int) -> bytes:
    shape_proto = b"".join(field_bytes(2, field_varint(1, d)) for d in shape)
    return (field_varint(1, dtype_code) + field_bytes(2, shape_proto) + field_varint(3, shard)
            + field_varint(4, offset) + field_varint(5, size) + field_fixed32(6, masked_crc))


def header_proto(n_shards: int) -> bytes:
    return field_varint(1, n_shards) + field_varint(2, 0) + field_bytes(3, field_varint(1, 1))


def build_block(entries, restart_interval: int = 16) -> bytes:
    """Prefix-compressed block with a restart point every `restart_interval` entries."""
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def shortest_separator(start: bytes, limit: bytes) -> bytes:
    """LevelDB's BytewiseComparator::FindShortestSeparator: a short key in [start, limit)."""
    common = 0
    while common < min(len(start), len(limit)) and start[common] == limit[common]:
        common += 1
    if common < min(len(start), len(limit)) and start[common] < 0xFF and start[common] + 1 < limit[common]:
        return start[:common] + bytes([start[common] + 1])
    return start


def short_successor(key: bytes) -> bytes:
    """LevelDB's BytewiseComparator::FindShortSuccessor: a short key >= key ("model/wte" -> "n")."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def snappy_compress(data: bytes) -> bytes:
    """A small Snappy compressor: greedy matches of >= 4 bytes found through a hash of the last
    position of every 4-byte string; literals otherwise (format: weights/snappy.py)."""
    out, last_seen, pos, literal_start = bytearray(varint(len(data))), {}, 0, 0

    def literal(chunk: bytes):
        n = len(chunk) - 1
        out.extend(bytes([n << 2]) if n < 60 else bytes([61 << 2]) + n.to_bytes(2, "little"))
        out.extend(chunk)

    while pos + 4 <= len(data):
        candidate = last_seen.get(data[pos:pos + 4])
        last_seen[data[pos:pos + 4]] = pos
        if candidate is None or pos - candidate > 0xFFFF:
            pos += 1
            continue
        length = 4
        while pos + length < len(data) and length < 64 and data[candidate + length] == data[pos + length]:
            length += 1
        for start in range(literal_start, pos, 60000):
            literal(data[start:min(pos, start + 60000)])
        out.extend(bytes([(length - 1) << 2 | 2]) + (pos - candidate).to_bytes(2, "little"))  # copy, 2-byte offset
        pos += length
        literal_start = pos
    for start in range(literal_start, len(data), 60000):
        literal(data[start:start + 60000])
    return bytes(out)


def write_table(path: Path, entries, entries_per_block: int = 7, snappy: bool = False) -> None:
    """A table of sorted (key, value) pairs, `entries_per_block` per data block (TensorFlow cuts
    blocks at 256 KB, so a real checkpoint index is one block; small blocks exercise the index).
    snappy: store every block Snappy-compressed (type 1), as TensorFlow's default options may."""
    body = bytearray()

    def add_block(block: bytes) -> bytes:
        stored, kind = (snappy_compress(block), b"\x01") if snappy else (block, b"\x00")
        handle = varint(len(body)) + varint(len(stored))
        body.extend(stored + kind + struct.pack("<I", crc32c.mask(crc32c.value(stored + kind))))
        return handle

    index = []
    for start in range(0, len(entries), entries_per_block):
        chunk, following = entries[start:start + entries_per_block], entries[start + entries_per_block:]
        last = chunk[-1][0]
        separator = shortest_separator(last, following[0][0]) if following else short_successor(last)
        index.append((separator, add_block(build_block(chunk))))
    metaindex = add_block(build_block([]))
    index_handle = add_block(build_block(index, restart_interval=1))
    footer = (metaindex + index_handle).ljust(40, b"\x00")
    footer += struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32)
    Path(path).write_bytes(bytes(body) + footer)


def index_records(entries, n_shards: int) -> list[tuple[bytes, bytes]]:
    """The index table's records: the header, then (name, BundleEntryProto) in name order.
    entries: (name, dtype code, shape, shard, offset, size, masked crc) tuples."""
    records = [(b"", header_proto(n_shards))]
    for name, *fields in sorted(entries):
        records.append((name.encode(), entry_proto(*fields)))
    return records


def write_tensor_bundle(prefix: Path, tensors: dict, n_shards: int = 1, dtype_codes: dict | None = None,
                        entries_per_block: int = 7) -> None:
    """A TensorFlow checkpoint `prefix`.index + `prefix`.data-*: tensors dealt round-robin to shards.
    dtype_codes: {name: DataType code} to declare another dtype than the array's (bad-input tests)."""
    dtype_codes = dtype_codes or {}
    prefix = Path(prefix)
    shards = [bytearray() for _ in range(n_shards)]
    entries = []
    for i, name in enumerate(sorted(tensors)):
        array = np.asarray(tensors[name])  # (not ascontiguousarray: it turns a scalar into shape (1,))
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        shard = shards[i % n_shards]
        code = dtype_codes.get(name, DT_CODES[array.dtype.newbyteorder("<")])
        entries.append((name, code, array.shape, i % n_shards, len(shard), len(raw), crc32c.mask(crc32c.value(raw))))
        shard.extend(raw)
    write_table(prefix.with_name(prefix.name + ".index"), index_records(entries, n_shards), entries_per_block)
    for k, data in enumerate(shards):
        prefix.with_name(f"{prefix.name}.data-{k:05d}-of-{n_shards:05d}").write_bytes(bytes(data))


# ------------------------------------------------------------------------ whole folders ---

def tf_variable_name(name: str) -> str:
    """"blocks.3.attn.c_attn.w" -> "model/h3/attn/c_attn/w" (written out, not imported)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        parts = [f"h{parts[1]}"] + parts[2:]
    return "/".join(["model"] + parts)


def conv_weight(name: str, array: np.ndarray) -> np.ndarray:
    """OpenAI stores the projection weights as conv1d kernels [1, in, out]."""
    return array[None] if name.startswith("blocks.") and name.endswith(".w") else array


def gpt2_tf_tensors(params: dict) -> dict[str, np.ndarray]:
    """OpenAI's variables: {"model/h0/attn/c_attn/w": [1, C, 3C] array, ...}."""
    return {tf_variable_name(n): conv_weight(n, a) for n, a in R.flatten_params(params).items()}


def write_openai_gpt2(folder: Path, config: R.GPTConfig, params: dict, n_shards: int = 1, **bundle_options) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hparams = {"n_vocab": config.n_vocab, "n_ctx": config.n_ctx, "n_embd": config.n_embd,
               "n_head": config.n_head, "n_layer": config.n_layer}
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2))
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n'
                                       'all_model_checkpoint_paths: "model.ckpt"\n')
    write_tensor_bundle(folder / "model.ckpt", gpt2_tf_tensors(params), n_shards, **bundle_options)
    return folder


GPT1_LAYER = ("attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w", "attn.c_proj.b", "ln_1.g", "ln_1.b",
              "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b", "ln_2.g", "ln_2.b")


def write_openai_gpt1(folder: Path, config: R.GPTConfig, params: dict, n_shards: int = 10) -> Path:
    """params_shapes.json + params_{k}.npy as OpenAI released GPT-1, plus hparams.json (n_head)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = R.flatten_params(params)
    order = ["wpe", "wte"] + [f"blocks.{i}.{n}" for i in range(config.n_layer) for n in GPT1_LAYER]
    arrays = [conv_weight(n, flat[n]) for n in order]
    (folder / "params_shapes.json").write_text(json.dumps([list(a.shape) for a in arrays]))
    (folder / "hparams.json").write_text(json.dumps({"n_head": config.n_head}))
    everything = np.concatenate([a.reshape(-1) for a in arrays])
    for k, piece in enumerate(np.array_split(everything, n_shards)):
        np.save(folder / f"params_{k}.npy", piece)
    return folder


def hf_config_json(config: R.GPTConfig) -> dict:
    """config.json as the hub's gpt2 / openai-gpt have it (the keys the loader needs)."""
    common = {"vocab_size": config.n_vocab, "n_positions": config.n_ctx, "n_embd": config.n_embd,
              "n_layer": config.n_layer, "n_head": config.n_head, "layer_norm_epsilon": config.layer_norm_epsilon}
    if config.arch == "gpt2":
        return {"model_type": "gpt2", "activation_function": "gelu_new", "n_ctx": config.n_ctx, **common}
    return {"model_type": "openai-gpt", "afn": "gelu", **common}


def write_hf(folder: Path, config: R.GPTConfig, params: dict, *, prefix: str = "", mask_buffers: bool = False,
             n_shards: int = 1) -> Path:
    """A Hugging Face folder: hub-style names (no prefix by default), optional attn.bias buffers,
    one model.safetensors or `n_shards` shards with model.safetensors.index.json."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config_json(config), indent=2))
    tensors = {hf_name(n, config.arch, prefix): np.ascontiguousarray(a) for n, a in R.flatten_params(params).items()}
    if mask_buffers:
        causal = np.tril(np.ones((config.n_ctx, config.n_ctx), np.float32))[None, None]
        tensors.update({f"{prefix}h.{i}.attn.bias": causal for i in range(config.n_layer)})
    if n_shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = sorted(tensors)
    weight_map = {}
    for k in range(n_shards):
        file = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::n_shards]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder
