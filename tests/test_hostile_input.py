"""Hostile files: a checkpoint, a processed split or a resume checkpoint crafted to run code when unpickled is
rejected (torch.load with weights_only=True), and the code never runs."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from digits import data, resume, training


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_torch_file(path: Path, marker: Path, **tensors: torch.Tensor) -> None:
    """A genuine torch.save archive whose pickle also holds the payload next to real tensors."""
    buf = io.BytesIO()
    torch.save({**tensors, "extra": Payload(marker)}, buf)
    path.write_bytes(buf.getvalue())


def test_the_payload_really_runs_without_weights_only(tmp_path: Path):
    """Proves the marker checks below can fail: the same file executes the command under a plain torch.load."""
    marker = tmp_path / "pwned"
    hostile_torch_file(tmp_path / "evil.pt", marker, w=torch.ones(1))
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_load_checkpoint_rejects_code_execution(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    hostile_torch_file(path, marker, state_dict=torch.ones(1))
    with pytest.raises(data.DataError, match="not a usable checkpoint .*Unpickl"):
        training.load_checkpoint(path)
    assert not marker.exists()


def test_load_split_rejects_code_execution(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "train.pt"
    hostile_torch_file(path, marker, images=torch.zeros(2, 28, 28, dtype=torch.uint8), labels=torch.zeros(2).long())
    with pytest.raises(data.DataError, match="unreadable or corrupted processed data"):
        data.load_split(path)
    assert not marker.exists()


def test_resume_checkpoint_with_code_is_ignored_and_removed(tmp_path: Path, capsys):
    marker = tmp_path / "pwned"
    store = resume.Store(tmp_path / "resume", "key")
    store.path.parent.mkdir()
    hostile_torch_file(store.path, marker, format=torch.tensor(1))
    assert store.load() is None
    assert "ignoring unusable resume checkpoint" in capsys.readouterr().out
    assert not marker.exists() and not store.path.exists()


def test_plain_pickle_checkpoint_is_rejected(tmp_path: Path):
    """Not even a torch archive: a bare pickle stream with the payload."""
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(data.DataError, match="not a usable checkpoint"):
        training.load_checkpoint(path)
    assert not marker.exists()
