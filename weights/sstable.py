"""Reader of the LevelDB-style table ("SSTable") that holds a TensorFlow checkpoint's index.

TensorFlow copied LevelDB's table format into tensorflow/core/lib/io (table.cc, block.cc,
format.cc).  A table file is

    data block 0 | trailer | data block 1 | trailer | ... | metaindex block | trailer |
    index block | trailer | footer (48 bytes)

    footer  = metaindex handle, index handle (each: varint64 offset, varint64 size),
              zero padding to 40 bytes, then the 8-byte magic 0xdb4775248b80fb57 (little endian)
    trailer = 1 byte compression type (0 none, 1 Snappy) + masked CRC-32C of (block as stored + type)
    block   = entries, then restart offsets (uint32 each), then their count (uint32)
    entry   = varint32 shared, varint32 non_shared, varint32 value_length,
              key[shared:] (non_shared bytes), value (value_length bytes)

Keys are prefix-compressed: an entry stores only the bytes that differ from the previous key.
The index block maps a separator key (>= every key of a data block) to that block's handle.
Reading everything means walking the index block and then each data block in turn.
"""
from __future__ import annotations

import struct
from pathlib import Path

from . import crc32c, snappy
from .common import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 handles of at most 10 + 10 bytes, padded to 40, + 8 magic bytes
TRAILER_SIZE = 5
NO_COMPRESSION, SNAPPY = 0, 1


def read_varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    """Decode a base-128 varint at data[pos]; return (value, position after it)."""
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise CheckpointError(f"{where}: varint runs past the end of the data")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: varint longer than 10 bytes")


def read_handle(data: bytes, pos: int, where: str) -> tuple[tuple[int, int], int]:
    """A block handle (offset, size) at data[pos]; return it and the position after it."""
    offset, pos = read_varint(data, pos, where)
    size, pos = read_varint(data, pos, where)
    return (offset, size), pos


def read_block(table: bytes, handle: tuple[int, int], where: str) -> bytes:
    """The contents of the block at `handle`, after checking its trailer's type and CRC."""
    offset, size = handle
    end = offset + size + TRAILER_SIZE
    if end > len(table) - FOOTER_SIZE:
        raise CheckpointError(f"{where}: block at offset {offset} (+{size} bytes) runs past the end "
                              f"of the file ({len(table)} bytes): the file is truncated or corrupt")
    contents = table[offset:offset + size]
    kind = table[offset + size]
    (stored,) = struct.unpack_from("<I", table, offset + size + 1)
    actual = crc32c.value(table[offset:offset + size + 1])
    if crc32c.unmask(stored) != actual:
        raise CheckpointError(f"{where}: CRC mismatch in the block at offset {offset}: stored "
                              f"{crc32c.unmask(stored):#010x}, computed {actual:#010x} (the file is corrupt)")
    if kind == SNAPPY:
        return snappy.decompress(contents, f"{where}, block at offset {offset}")
    if kind != NO_COMPRESSION:
        raise CheckpointError(f"{where}: block at offset {offset} has compression type {kind}; TensorFlow "
                              f"tables use only 0 (none) and 1 (Snappy)")
    return contents


def block_entries(block: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of one block, keys decompressed."""
    if len(block) < 4:
        raise CheckpointError(f"{where}: block of {len(block)} bytes is too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (n_restarts + 1)
    if limit < 0:
        raise CheckpointError(f"{where}: block claims {n_restarts} restart points, more than fit in it")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = read_varint(block, pos, where)
        unshared, pos = read_varint(block, pos, where)
        value_length, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_length > limit:
            raise CheckpointError(f"{where}: corrupt block entry at byte {pos}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the table file at `path`, in key order."""
    table = Path(path).read_bytes()
    where = str(path)
    if len(table) < FOOTER_SIZE:
        raise CheckpointError(f"{where}: {len(table)} bytes, too short for a table footer ({FOOTER_SIZE} bytes)")
    footer = table[-FOOTER_SIZE:]
    magic_low, magic_high = struct.unpack_from("<II", footer, 40)
    magic = magic_high << 32 | magic_low
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{where}: bad table magic {magic:#018x} (expected {TABLE_MAGIC:#018x}): "
                              f"not a TensorFlow checkpoint index, or the end of the file is missing")
    _metaindex, pos = read_handle(footer, 0, where)
    index_handle, _ = read_handle(footer, pos, where)
    entries = []
    for _separator, handle_bytes in block_entries(read_block(table, index_handle, where + " (index block)"), where):
        handle, _ = read_handle(handle_bytes, 0, where)
        entries.extend(block_entries(read_block(table, handle, where), where))
    keys = [key for key, _ in entries]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise CheckpointError(f"{where}: table keys are not strictly increasing (corrupt index)")
    return entries
