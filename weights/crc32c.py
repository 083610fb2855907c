"""CRC-32C (Castagnoli), the checksum TensorFlow's checkpoint files use, and its "mask".

Byte at a time (the textbook table-driven loop), pure Python manages ~8 MB/s: a minute for
the 498 MB of GPT-2 124M.  So larger inputs run as up to 65536 *lanes* in NumPy: the input is
cut into equal lanes whose CRCs advance together, two bytes per step (a 65536-entry table),
and the lane CRCs are then joined pairwise with the linear operator "append L zero bytes"
(CRC is linear over GF(2): the idea of zlib's crc32_combine).  Same result, ~250 MB/s.

TensorFlow stores CRCs *masked* (crc32c.h): rotate right by 15 bits and add a constant, so
that the CRC of a string that itself holds CRCs is not degenerate.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_POLYNOMIAL = 0x82F63B78  # Castagnoli polynomial, bit-reversed (the CRC is computed LSB first)
_MASK_DELTA = 0xA282EAD8


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def _make_table16() -> np.ndarray:
    """Two zero-byte steps at once: feeding bytes b0, b1 is register ^= b0 | b1 << 8, then
    register = _TABLE16[register & 0xFFFF] ^ (register >> 16)."""
    table = np.array(_TABLE, np.uint32)
    registers = np.arange(1 << 16, dtype=np.uint32)
    for _ in range(2):
        registers = table[registers & 0xFF] ^ (registers >> 8)
    return registers


_TABLE16 = _make_table16()


_MAX_LANES = 1 << 16  # bytes advanced per NumPy step
_MIN_COLUMNS = 16  # below 16 bytes per lane, plain Python is as fast
_CHUNK = 1 << 24  # 16 MB per pass keeps the transposed copy small


def _advance(register: int, data) -> int:
    """The raw (unconditioned) CRC register after feeding `data`, one byte at a time."""
    table = _TABLE
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _apply(operator: np.ndarray, registers):
    """A linear map of registers, given as 4 tables of 256 (one per register byte)."""
    return (operator[0][registers & 0xFF] ^ operator[1][(registers >> 8) & 0xFF]
            ^ operator[2][(registers >> 16) & 0xFF] ^ operator[3][registers >> 24])


def _operator(images: np.ndarray) -> np.ndarray:
    """Tables [4, 256] of the linear map sending bit i to images[i]."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # [256, 8]: the bits of each byte value
    tables = np.zeros((4, 256), np.uint32)
    for k in range(4):
        for i in range(8):
            tables[k] ^= np.where(bits[:, i] == 1, images[8 * k + i], np.uint32(0))
    return tables


_BASIS = np.uint32(1) << np.arange(32, dtype=np.uint32)


@lru_cache(maxsize=64)
def _zeros_operator(n_zeros: int) -> np.ndarray:
    """register -> register after n_zeros zero bytes.  Even counts square the operator of half as
    many; small ones push the 32 one-bit registers through byte by byte."""
    if n_zeros >= 64 and n_zeros % 2 == 0:
        half = _zeros_operator(n_zeros // 2)
        return _operator(_apply(half, _apply(half, _BASIS)))
    table, images = np.array(_TABLE, np.uint32), _BASIS
    for _ in range(n_zeros):
        images = table[images & 0xFF] ^ (images >> 8)
    return _operator(images)


def _advance_lanes(register: int, chunk: np.ndarray, n_lanes: int) -> int:
    """`_advance` for a chunk of n_lanes * L bytes: lane i (row i) advances two bytes per NumPy
    step; then neighbouring lanes are joined pairwise, register(A + B) =
    zeros_|B|(register(A)) ^ register_0(B), |B| doubling each round."""
    rows = chunk.reshape(n_lanes, -1)
    columns = np.ascontiguousarray(rows.view("<u2").T)  # [L / 2, lanes]: two bytes per step
    lanes = np.zeros(n_lanes, np.uint32)
    for column in columns:
        lanes = _TABLE16[(lanes ^ column) & 0xFFFF] ^ (lanes >> 16)
    width = rows.shape[1]
    while lanes.size > 1:
        lanes = _apply(_zeros_operator(width), lanes[0::2]) ^ lanes[1::2]
        width *= 2
    return int(_apply(_zeros_operator(width), np.uint32(register)) ^ lanes[0])


def extend(crc: int, data) -> int:
    """The CRC-32C of (the bytes behind `crc`) + `data`; `extend(0, data)` is the CRC of data.
    `data`: bytes-like or a NumPy array (its raw bytes)."""
    view = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    register = crc ^ 0xFFFFFFFF
    start = 0
    while view.size - start >= 2 * _MIN_COLUMNS:
        size = min(_CHUNK, view.size - start)
        n_lanes = min(_MAX_LANES, 1 << (size // _MIN_COLUMNS).bit_length() - 1)  # a power of two
        size = size // (2 * n_lanes) * 2 * n_lanes  # an even number of bytes per lane
        register = _advance_lanes(register, view[start:start + size], n_lanes)
        start += size
    return _advance(register, view[start:]) ^ 0xFFFFFFFF


def value(data: bytes) -> int:
    """CRC-32C of `data` (check value: value(b"123456789") == 0xE3069283)."""
    return extend(0, data)


def mask(crc: int) -> int:
    """TensorFlow's masked form of a CRC: rotate right 15 bits, add a constant (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of `mask`."""
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
