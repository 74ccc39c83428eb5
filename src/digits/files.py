"""Atomic file writes and checksums: a reader never sees a half-written artifact."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digits.errors import UserError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest`` in one rename.

    On any exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL like mkstemp, but mode 0666 so the umask applies (mkstemp would leave the artifact 0600)
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes(dest, text.encode())


def write_torch(dest: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically and byte-reproducibly.

    torch.save names the archive's inner folder after the file it writes to, so saving straight to a randomly
    named temp file would make identical objects hash differently; serialising to memory avoids that.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(dest, buf.getvalue())


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], produced_by: str) -> Any:
    """Read a JSON file an earlier stage wrote; a missing or broken one is a UserError naming that stage."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the {produced_by} stage (dvc repro {produced_by})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); re-run the {produced_by} stage") from None


def read_csv(path: str | os.PathLike[str], produced_by: str) -> list[dict[str, str]]:
    """Rows of a CSV file an earlier stage wrote; a missing or broken one is a UserError naming that stage."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the {produced_by} stage (dvc repro {produced_by})") from None
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); re-run the {produced_by} stage") from None


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_csv(dest: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Rows of one shape as CSV with a header (the format DVC plots read)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(dest, buf.getvalue())
