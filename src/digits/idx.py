"""The IDX file format MNIST ships in: big-endian magic, dimensions, then raw unsigned bytes."""

from __future__ import annotations

import struct

import numpy as np

from digits.errors import UserError

UBYTE = 0x08


class IDXError(UserError, ValueError):
    """The bytes are not a well-formed uint8 IDX file."""


def encode(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes."""
    if array.dtype != np.uint8:
        raise IDXError(f"IDX encoding supports uint8 only, got {array.dtype}")
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a uint8 array, checking the header against the payload size."""
    if len(data) < 4:
        raise IDXError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UBYTE or not 1 <= ndim <= 4:
        raise IDXError(f"{name}: bad IDX magic {data[:4].hex()} (expected 0000 08 0n, uint8 data)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IDXError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header_len != expected:
        raise IDXError(f"{name}: header promises {expected} bytes for shape {shape}, file has {len(data) - header_len}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)
