"""Resumable training: one checkpoint per run identity, written atomically after every epoch.

The checkpoint lives outside DVC's outputs (DVC deletes a stage's outputs before running it), in
``<project root>/.cache/train-resume/<key>.pt``, where ``key`` hashes the validated train params, the processed
data's identity (stats.json, file MD5s), the device (with the CPU thread count), the torch version, the training
code (``code_identity``) and the variables that pin the CPU kernels' instruction set (scripts/avx2.env): a run with
any of them changed never resumes another's state, so no model mixes epochs of two versions of the code. It is
deleted after the run that wrote it succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import mlflow
import torch

from digits import files, tracking

FORMAT = 1


def default_dir() -> Path:
    """``.cache/train-resume`` at the project root (the main checkout also for DVC's temp experiment copies)."""
    return tracking.project_root() / ".cache" / "train-resume"


KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
"""Environment variables that change which CPU kernels run, hence the float results of a training step."""


def code_identity(*scripts: str | Path) -> str:
    """MD5 over the source files of the ``digits`` package and ``scripts`` (the stage script), names included."""
    digest = hashlib.md5()
    for path in [*sorted(Path(__file__).parent.glob("*.py")), *map(Path, scripts)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_key(train_params: dict[str, Any], data_identity: dict[str, Any], device: str, code: str) -> str:
    """``device`` describes the device and CPU thread count (the thread count changes float reduction order);
    ``code`` identifies the training code (``code_identity``)."""
    identity = {
        "format": FORMAT,
        "params": train_params,
        "data": data_identity,
        "device": device,
        "torch": torch.__version__,
        "code": code,
        "kernels": {name: os.environ.get(name) for name in KERNEL_VARIABLES},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Store:
    """Where the resume checkpoint of one run identity is saved, loaded and cleared."""

    def __init__(self, directory: str | Path, key: str):
        self.key = key
        self.path = Path(directory) / f"{key}.pt"

    def save(self, state: dict[str, Any]) -> None:
        files.write_torch(self.path, {"format": FORMAT, "key": self.key, **state})

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None. An unreadable or foreign file is reported, removed and ignored (training
        starts over): it is loaded with ``weights_only``, so a crafted pickle cannot run code."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("key") != self.key:
                raise ValueError("written for another run identity or format")
        except Exception as exc:  # torch raises many types for damaged or hostile files
            print(
                f"warning: ignoring unusable resume checkpoint {self.path} ({type(exc).__name__}: {exc}); "
                "training from scratch",
                flush=True,
            )
            self.clear()
            return None
        return state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def announce(state: dict[str, Any], store: Store, run_id: str, epochs: int) -> None:
    """Say that training continues (stdout and an MLflow tag); if the interrupted run is gone from the store and
    ``run_id`` is a new run, log the restored epochs' metrics to it."""
    print(f"resuming from epoch {state['epoch'] + 1} of {epochs}: epochs 1-{state['epoch']} restored from "
          f"{store.path}", flush=True)  # fmt: skip
    mlflow.set_tag("resumed_from_epoch", state["epoch"] + 1)
    if run_id != state["run_id"]:
        for row in state["history"]:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
