"""Snappy decompression (github.com/google/snappy, format_description.txt), pure Python.

TensorFlow's table writer compresses index blocks with Snappy by default when that saves at
least 1/8 (checkpoints merged from several savers, e.g. by tf.train.Saver, use the default;
OpenAI's GPT-2 index is stored uncompressed).  The format:

    varint                 length of the uncompressed data
    elements, each starting with a tag byte whose low 2 bits say what follows:
      00 literal           length-1 in the tag's upper 6 bits (60..63: in the next 1..4 bytes)
      01 copy, 1-byte off  length 4 + bits 2..4, offset bits 5..7 << 8 | next byte
      10 copy, 2-byte off  length 1 + upper 6 bits, offset in the next 2 bytes (little endian)
      11 copy, 4-byte off  length 1 + upper 6 bits, offset in the next 4 bytes
A copy repeats `length` bytes starting `offset` back in the output; it may overlap itself.
"""
from __future__ import annotations

from .common import CheckpointError


def decompress(data: bytes, where: str) -> bytes:
    """The uncompressed bytes of a Snappy block; `where` names the block in errors."""
    from .sstable import read_varint

    expected, pos = read_varint(data, 0, where)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            length = (tag >> 2) + 1
            if length > 60:
                extra = length - 60
                length = int.from_bytes(data[pos:pos + extra], "little") + 1
                pos += extra
            out += data[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = 4 + ((tag >> 2) & 7), (tag >> 5) << 8 | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            length, offset = (tag >> 2) + 1, int.from_bytes(data[pos:pos + width], "little")
            pos += width
        if not 0 < offset <= len(out):
            raise CheckpointError(f"{where}: corrupt Snappy data (copy from offset {offset} with {len(out)} bytes out)")
        for _ in range(length):  # byte by byte: a copy may read what it has just written
            out.append(out[-offset])
    if pos > len(data) or len(out) != expected:
        raise CheckpointError(f"{where}: corrupt Snappy data ({len(out)} bytes decoded, header says {expected})")
    return bytes(out)
