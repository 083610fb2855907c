"""TensorFlow's checkpoint ("tensor bundle") format, read in pure Python -- no TensorFlow.

A checkpoint with prefix P is

    P.index                         a table (see sstable.py) of protobuf records:
                                      key ""          -> BundleHeaderProto
                                      key tensor name -> BundleEntryProto
    P.data-00000-of-0000N ...       N shards of raw tensor bytes, little endian, back to back

    BundleHeaderProto  1: num_shards int32   2: endianness (0 little, 1 big)   3: version
    BundleEntryProto   1: dtype (DataType enum)   2: shape (TensorShapeProto)   3: shard_id
                       4: offset int64   5: size int64   6: crc32c fixed32 (masked CRC-32C
                       of the tensor's bytes)   7: slices (partitioned variables)
    TensorShapeProto   2: dim (repeated; each Dim has 1: size int64, 2: name)

(tensorflow/core/protobuf/tensor_bundle.proto, tensorflow/core/util/tensor_bundle/.)
The protobuf wire format needs only a few lines here: each field is a varint key
(field_number << 3 | wire_type) followed by a varint, 8 bytes, a length-prefixed string or
4 bytes for wire types 0, 1, 2 and 5.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import crc32c
from .common import CheckpointError, require_file
from .sstable import read_table, read_varint

# DataType enum (tensorflow/core/framework/types.proto) -> little-endian NumPy dtype.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2",
          19: "<f2", 22: "<u4", 23: "<u8"}
DTYPE_NAMES = {1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16", 6: "DT_INT8",
               7: "DT_STRING", 8: "DT_COMPLEX64", 9: "DT_INT64", 10: "DT_BOOL", 11: "DT_QINT8",
               12: "DT_QUINT8", 13: "DT_QINT32", 14: "DT_BFLOAT16", 15: "DT_QINT16", 16: "DT_QUINT16",
               17: "DT_UINT16", 18: "DT_COMPLEX128", 19: "DT_HALF", 20: "DT_RESOURCE", 21: "DT_VARIANT",
               22: "DT_UINT32", 23: "DT_UINT64"}
BIG_ENDIAN = 1


def parse_proto(data: bytes, where: str) -> dict[int, list]:
    """Protobuf wire format -> {field number: [values]}: ints for varint/fixed fields, bytes for
    length-delimited ones (strings and nested messages)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos, where)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = read_varint(data, pos, where)
        elif wire_type == 1:
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire_type == 2:
            length, pos = read_varint(data, pos, where)
            value, pos = data[pos:pos + length], pos + length
        elif wire_type == 5:
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire_type} (field {number})")
        if pos > len(data):
            raise CheckpointError(f"{where}: protobuf field {number} runs past the end of the record")
        fields.setdefault(number, []).append(value)
    return fields


def _one(fields: dict, number: int, default=0):
    return fields.get(number, [default])[-1]  # protobuf: the last occurrence of a field wins


class BundleEntry(NamedTuple):
    """Where one tensor lives: its dtype, shape and byte range in a data shard."""
    name: str
    dtype_code: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    masked_crc: int


def parse_entry(name: str, record: bytes, where: str) -> BundleEntry:
    fields = parse_proto(record, f"{where}, tensor {name!r}")
    if fields.get(7):
        raise CheckpointError(f"{where}: tensor {name!r} is a partitioned variable (saved as slices); "
                              f"only whole tensors are supported")
    shape_fields = parse_proto(_one(fields, 2, b""), f"{where}, shape of {name!r}")
    dims = tuple(_one(parse_proto(dim, where), 1) for dim in shape_fields.get(2, []))
    return BundleEntry(name, _one(fields, 1), dims, _one(fields, 3), _one(fields, 4), _one(fields, 5),
                       _one(fields, 6))


def data_file(prefix: Path, shard: int, n_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{n_shards:05d}")


class TensorBundle:
    """The index of a checkpoint (parsed eagerly) and its tensors (read on demand).

        bundle = TensorBundle("dir/model.ckpt")
        bundle.entries["model/wte"].shape  -> (50257, 768)
        bundle.read("model/wte")           -> float32 array (memory-mapped)
        bundle.verify("model/wte")         checks its CRC
    """

    def __init__(self, prefix):
        self.prefix = Path(prefix)
        self.index_path = require_file(self.prefix.with_name(self.prefix.name + ".index"),
                                       "TensorFlow checkpoint index")
        where = str(self.index_path)
        records = read_table(self.index_path)
        if not records or records[0][0] != b"":
            raise CheckpointError(f"{where}: no header entry (empty key): not a tensor bundle index")
        header = parse_proto(records[0][1], f"{where}, header")
        self.n_shards = _one(header, 1)
        if self.n_shards < 1:
            raise CheckpointError(f"{where}: header says num_shards={self.n_shards}")
        if _one(header, 2) == BIG_ENDIAN:
            raise CheckpointError(f"{where}: big-endian checkpoint; only little-endian ones are supported")
        self.entries: dict[str, BundleEntry] = {}
        for key, record in records[1:]:
            name = key.decode("utf-8", errors="replace")
            entry = parse_entry(name, record, where)
            if not 0 <= entry.shard < self.n_shards:
                raise CheckpointError(f"{where}: tensor {name!r} is in shard {entry.shard}, but the header "
                                      f"says there are {self.n_shards}")
            self.entries[name] = entry
        self._shards: dict[int, np.memmap] = {}

    def dtype_of(self, name: str) -> np.dtype:
        entry = self.entries[name]
        if entry.dtype_code not in DTYPES:
            dtype_name = DTYPE_NAMES.get(entry.dtype_code, f"unknown DataType {entry.dtype_code}")
            raise CheckpointError(f"{self.index_path}: tensor {name!r} has dtype {dtype_name}, which this "
                                  f"reader does not support (numeric dtypes: "
                                  f"{', '.join(DTYPE_NAMES[c] for c in DTYPES)})")
        return np.dtype(DTYPES[entry.dtype_code])

    def _shard(self, shard: int) -> np.memmap:
        if shard not in self._shards:
            path = require_file(data_file(self.prefix, shard, self.n_shards),
                                f"data shard {shard} of {self.n_shards} of checkpoint {self.prefix}")
            self._shards[shard] = np.memmap(path, np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        return self._shards[shard]

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a read-only array mapped from its data shard (no bytes read yet;
        call `verify` to check its CRC)."""
        if name not in self.entries:
            raise KeyError(f"{self.index_path} has no tensor {name!r}")
        entry = self.entries[name]
        dtype = self.dtype_of(name)
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if entry.size != expected:
            raise CheckpointError(f"{self.index_path}: tensor {name!r} has {entry.size} bytes, but shape "
                                  f"{entry.shape} of {DTYPE_NAMES[entry.dtype_code]} needs {expected}")
        return self._raw(entry).view(dtype).reshape(entry.shape)

    def verify(self, name: str) -> None:
        """Check the tensor's bytes against the masked CRC-32C stored in the index."""
        entry = self.entries[name]
        actual = crc32c.value(self._raw(entry))
        if actual != crc32c.unmask(entry.masked_crc):
            raise CheckpointError(f"{data_file(self.prefix, entry.shard, self.n_shards)}: CRC mismatch for tensor "
                                  f"{name!r}: the index stores {crc32c.unmask(entry.masked_crc):#010x}, the data "
                                  f"gives {actual:#010x} (the data file is corrupt or does not belong to this index)")

    def _raw(self, entry: BundleEntry) -> np.ndarray:
        shard = self._shard(entry.shard)
        if entry.offset + entry.size > shard.size:
            raise CheckpointError(f"{data_file(self.prefix, entry.shard, self.n_shards)} is truncated: it has "
                                  f"{shard.size} bytes, tensor {entry.name!r} needs bytes "
                                  f"{entry.offset}..{entry.offset + entry.size}")
        return shard[entry.offset:entry.offset + entry.size]
