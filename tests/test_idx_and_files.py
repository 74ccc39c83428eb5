"""digits.idx (IDX encode/decode) and digits.files (atomic writes, checksums)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import struct

import numpy as np
import pytest

from digits import files, idx
from digits.errors import UserError

# ---------------------------------------------------------------- idx


@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_idx_round_trip(shape):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    out = idx.decode(idx.encode(arr))
    assert out.dtype == np.uint8
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_idx_encode_header_layout():
    """Big-endian: 0x0000, type 0x08 (ubyte), ndim, then one uint32 per dimension, then the raw bytes."""
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    data = idx.encode(arr)
    assert data[:4] == b"\x00\x00\x08\x02"
    assert struct.unpack(">2I", data[4:12]) == (2, 3)
    assert data[12:] == bytes(range(6))


def test_idx_encode_non_contiguous_array_keeps_logical_order():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4).T  # a transposed view, not C-contiguous
    assert not arr.flags.c_contiguous
    np.testing.assert_array_equal(idx.decode(idx.encode(arr)), arr)


def test_idx_mnist_like_label_file_matches_spec():
    """A label file is magic 0x00000801, the count, then one byte per label."""
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    assert idx.encode(labels) == bytes.fromhex("00000801 00000005") + bytes([5, 0, 4, 1, 9])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int8, np.uint16, bool])
def test_idx_encode_rejects_non_uint8(dtype):
    with pytest.raises(idx.IDXError, match="uint8 only"):
        idx.encode(np.zeros((2, 2), dtype=dtype))


def _header(shape, dtype=idx.UBYTE, zero=0):
    return struct.pack(">HBB", zero, dtype, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "too short"),
        (b"\x00\x00\x08", "too short"),
        (b"\x00\x01\x08\x01" + b"\x00\x00\x00\x01x", "bad IDX magic"),  # non-zero leading bytes
        (_header((1,), dtype=0x0D) + b"\x00" * 4, "bad IDX magic"),  # float data type
        (b"\x00\x00\x08\x00", "bad IDX magic"),  # zero dimensions
        (b"\x00\x00\x08\x05" + b"\x00\x00\x00\x01" * 5 + b"x", "bad IDX magic"),  # five dimensions
        (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02", "truncated IDX header"),
        (_header((2, 3)) + b"\x00" * 5, "promises 6 bytes"),  # payload too short
        (_header((2, 3)) + b"\x00" * 7, "promises 6 bytes"),  # payload too long
        (_header((60000, 28, 28)) + b"\x00" * 100, "promises 47040000 bytes"),
    ],
)
def test_idx_decode_errors(data, match):
    with pytest.raises(idx.IDXError, match=match):
        idx.decode(data)


def test_idx_error_names_the_file_and_is_a_user_error():
    with pytest.raises(idx.IDXError) as info:
        idx.decode(b"\x00\x00\x08\x01\x00\x00\x00\x09abc", name="train-labels-idx1-ubyte")
    assert "train-labels-idx1-ubyte" in str(info.value)
    assert "file has 3" in str(info.value)
    assert isinstance(info.value, UserError)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- files.atomic_path


def test_atomic_path_replaces_destination_on_success(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with files.atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent  # same filesystem, so the final rename is atomic
        assert tmp != dest
        tmp.write_bytes(b"new content")
        assert dest.read_bytes() == b"old"  # readers still see the old file mid-write
    assert dest.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_leaves_old_file_and_no_temp_when_body_raises(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), files.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_path_creates_nothing_when_body_raises_and_dest_is_new(tmp_path):
    dest = tmp_path / "sub" / "out.json"
    with pytest.raises(KeyboardInterrupt), files.atomic_path(dest) as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert not dest.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_path_creates_parent_directories(tmp_path):
    dest = tmp_path / "a" / "b" / "c.txt"
    files.write_text(dest, "hello")
    assert dest.read_text() == "hello"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_has_normal_permissions(tmp_path, umask_022):
    """mkstemp makes 0600 files; an artifact must get the usual 0644 under umask 022."""
    dest = tmp_path / "artifact.bin"
    files.write_bytes(dest, b"x")
    assert _mode(dest) == 0o644
    files.write_json(tmp_path / "m.json", {"a": 1})
    assert _mode(tmp_path / "m.json") == 0o644
    assert os.umask(0o022) == 0o022  # the umask itself is left as it was


def test_atomic_write_respects_a_strict_umask(tmp_path):
    old = os.umask(0o077)
    try:
        files.write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.bin") == 0o600


def test_atomic_write_replaces_permissions_of_existing_file(tmp_path, umask_022):
    dest = tmp_path / "old.bin"
    dest.write_bytes(b"old")
    dest.chmod(0o600)
    files.write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert _mode(dest) == 0o644


# ---------------------------------------------------------------- write_json / write_csv / md5


def test_write_json_content(tmp_path):
    obj = {"zeta": 1, "alpha": [1.5, None, "s"], "nested": {"b": True}}
    dest = tmp_path / "metrics.json"
    files.write_json(dest, obj)
    text = dest.read_text()
    assert json.loads(text) == obj
    assert text.endswith("}\n")
    assert list(json.loads(text)) == ["zeta", "alpha", "nested"]  # insertion order, not sorted
    assert '\n  "zeta": 1,' in text  # two-space indent


def test_write_csv_content(tmp_path):
    rows = [{"epoch": 1, "loss": 0.5, "note": "a,b"}, {"epoch": 2, "loss": 0.25, "note": 'say "hi"'}]
    dest = tmp_path / "plot.csv"
    files.write_csv(dest, rows)
    text = dest.read_text()
    assert text.splitlines()[0] == "epoch,loss,note"
    assert "\r" not in text
    with open(dest, newline="") as f:
        back = list(csv.DictReader(f))
    assert back == [{k: str(v) for k, v in r.items()} for r in rows]


def test_write_csv_empty_rows_writes_an_empty_table(tmp_path):
    dest = tmp_path / "empty.csv"
    files.write_csv(dest, [])
    assert dest.exists()
    with open(dest, newline="") as f:
        assert list(csv.DictReader(f)) == []


def test_md5_helpers_known_values(tmp_path):
    assert files.md5_bytes(b"") == "d41d8cd98f00b204e9800998ecf8427e"
    assert files.md5_bytes(b"abc") == "900150983cd24fb0d6963f7d28e17f72"
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert files.md5_file(path) == "900150983cd24fb0d6963f7d28e17f72"


def test_md5_file_over_several_chunks(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (3 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert files.md5_file(path) == hashlib.md5(data).hexdigest() == files.md5_bytes(data)


def test_write_torch_is_byte_reproducible(tmp_path):
    """The same object saved twice (under different names) gives identical bytes: DVC hashes stay stable."""
    import torch

    obj = {"w": torch.arange(10, dtype=torch.float32), "name": "x"}
    files.write_torch(tmp_path / "a.pt", obj)
    files.write_torch(tmp_path / "b.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], obj["w"])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
