"""MLflow wiring: one store for the repository (also from DVC's temporary experiment copies), run identity tags."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

from digits.errors import UserError

EXPERIMENT = "digits"
EXP_TMP_PARTS = (".dvc", "tmp", "exps")


def project_root(start: str | Path | None = None) -> Path:
    """The main checkout's root, also when running inside a DVC temp/queued experiment copy.

    ``dvc exp run --temp`` and queued experiments run in ``<repo>/.dvc/tmp/exps/<tmpdir>/``;
    the store must be the one of ``<repo>`` so every experiment lands in the same place.
    """
    root = Path(start or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - len(EXP_TMP_PARTS)):
        if parts[i : i + len(EXP_TMP_PARTS)] == EXP_TMP_PARTS:
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the sqlite store ``mlflow.db`` at the project root (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_location() -> str:
    return (project_root() / "mlartifacts").as_uri()


def experiment_id(name: str | None = None) -> str:
    """Point MLflow at the project store and return the experiment's id, creating it if needed."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = tracking_uri()
    location = artifact_location() if uri.startswith("sqlite:") else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def identity() -> dict[str, str]:
    """Where this run comes from: git commit and dirty flag, DVC experiment name and baseline."""
    tags = {}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = tags["git_commit"] = commit
        # inputs only: DVC rewrites tracked outputs (dvc.lock, metrics/, reports/) while the pipeline runs
        status = _git("status", "--porcelain", "--untracked-files=no", "--", "src", "dvc.yaml", "params.yaml",
                      "pyproject.toml")
        tags["git_dirty"] = str(bool(status)).lower()
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def start_run(run_name: str, tags: dict[str, str]) -> mlflow.ActiveRun:
    """Start a new run in the project experiment, tagged with ``identity()`` and ``tags``."""
    exp = experiment_id()
    return mlflow.start_run(
        experiment_id=exp, run_name=os.environ.get("DVC_EXP_NAME") or run_name, tags={**identity(), **tags}
    )


def require_run(run_id: str) -> None:
    """Fail early, with one clear line, if the train stage's run is not in the current store."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"MLflow run {run_id} (from the train stage) is not in {uri}; re-run training "
                        "against this store: dvc repro -f train") from None


def resume_run(run_id: str) -> mlflow.ActiveRun:
    """Continue the run a previous stage started (evaluate and report add to train's run)."""
    require_run(run_id)
    return mlflow.start_run(run_id=run_id)
