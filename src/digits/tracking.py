"""MLflow wiring: one store for the repository (also from DVC's temporary experiment copies), run identity tags,
runs that end with an honest status, and a store that several processes may create at once."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import http.client
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from torch import nn

from digits import files
from digits.errors import UserError

EXPERIMENT = "digits"
EXP_TMP_PARTS = (".dvc", "tmp", "exps")
# MLflow 3's tag for a model-training experiment. MLflow 3.17's UI does not read it (its GenAI / Model training
# switch decides where an experiment opens: see runs_url); other MLflow clients and later UIs may.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


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


def require_server(uri: str | None = None, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the URI, when an HTTP tracking server does not answer its ``/health`` endpoint.

    MLflow's own client retries for minutes; stores that are not servers (sqlite, files) need no check.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            reply.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        hint = "start it (bash scripts/team-server.sh) or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        raise UserError(f"MLflow tracking server {uri} is unreachable ({reason}); {hint}") from None


def artifact_location() -> str:
    return (project_root() / "mlartifacts").as_uri()


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` while a sqlite store is opened (created and migrated on first use).

    MLflow creates a fresh sqlite store with alembic migrations that race when several processes open it at once
    ("table ... already exists", "duplicate column"); queued DVC experiments do exactly that. Other stores: no-op.
    """
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def experiment_id(name: str | None = None) -> str:
    """Point MLflow at the project store and return the experiment's id, creating it if needed."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    uri = tracking_uri()
    require_server(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock():
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            location = artifact_location() if uri.startswith("sqlite:") else None
            try:
                return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
            except mlflow.exceptions.MlflowException:  # a tracking server: another process created it first
                exp = mlflow.get_experiment_by_name(name)
        if any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):  # a store from before the kind was set
            for key, value in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id


def runs_url(ui: str) -> str:
    """The MLflow UI's page of the project experiment's training runs, ``ui`` its base URL. MLflow 3.17's UI opens
    an experiment on its GenAI overview unless the browser remembers its "Model training" switch (it ignores the
    experiment's kind): the link sets the switch."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id()}/runs?workflowType=machine_learning"


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


@contextlib.contextmanager
def _recorded(active: mlflow.ActiveRun) -> Iterator[mlflow.ActiveRun]:
    """End ``active`` as FINISHED, FAILED (an exception) or KILLED (SIGINT/SIGTERM, see stage.run): never RUNNING."""
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def _owner() -> dict[str, str]:
    """Which process holds a run open: lets a later run tell that a RUNNING run's process is gone."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_orphaned_runs(exp_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process no longer exists (SIGKILL, OOM, power loss: no
    handler could end them). Returns their ids."""
    client = mlflow.MlflowClient()
    host = socket.gethostname().replace("'", "")
    running = client.search_runs([exp_id], f"attributes.status = 'RUNNING' and tags.host = '{host}'")
    orphans = [r.info.run_id for r in running if r.data.tags.get("pid", "").isdigit()
               and not _alive(int(r.data.tags["pid"]))]  # fmt: skip
    for run_id in orphans:
        client.set_tag(run_id, "ended_by", "a later run found its process gone")
        client.set_terminated(run_id, "KILLED")
    return orphans


def run_exists(run_id: str) -> bool:
    require_server()
    mlflow.set_tracking_uri(tracking_uri())
    try:
        with store_lock():
            mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def run_name(label: str) -> str:
    """A run's name: the DVC experiment's name under ``dvc exp run``; else ``label@<short git revision>`` (with
    ``+changes`` when the inputs differ from that commit), so workspace runs can be told apart."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    tags = identity()
    if "git_commit" not in tags:
        return label
    return f"{label}@{tags['git_commit'][:7]}" + ("+changes" if tags["git_dirty"] == "true" else "")


def start_run(
    name: str,
    tags: dict[str, str],
    continue_run_id: str | None = None,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
) -> contextlib.AbstractContextManager[mlflow.ActiveRun]:
    """Start a run named ``name`` in the project experiment, tagged with ``identity()`` and ``tags``; a context
    manager that ends it with an honest status. ``continue_run_id``: reopen that run instead if the store still has
    it (a resumed training run). ``parent_run_id``: nest the run under that one. ``system_metrics``: sample CPU,
    memory (and GPU where present) into the run while it is open."""
    exp = experiment_id()
    end_orphaned_runs(exp)
    tags = {**identity(), **tags, **_owner()}
    if continue_run_id and run_exists(continue_run_id):
        active = mlflow.start_run(run_id=continue_run_id, log_system_metrics=system_metrics)
        mlflow.set_tags(tags)
    else:
        active = mlflow.start_run(experiment_id=exp, run_name=name, tags=tags, parent_run_id=parent_run_id,
                                  nested=parent_run_id is not None, log_system_metrics=system_metrics)  # fmt: skip
    return _recorded(active)


class DVCDatasetSource(DatasetSource):
    """A file that DVC tracks in this repository, at a git revision: ``dvc get <repo> PATH --rev REV`` fetches it."""

    def __init__(self, path: str, rev: str | None = None) -> None:
        self.path, self.rev = path, rev

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        """The file's path in this checkout."""
        return str(project_root() / self.path)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DVCDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rev": self.rev}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DVCDatasetSource:
        return cls(source_dict["path"], source_dict.get("rev"))


def log_datasets(splits: dict[str, str | Path]) -> None:
    """Log data files as the active run's dataset inputs, {context: path}: named ``mnist-<file stem>``, the digest
    the first 8 hex digits of the file's MD5 (all of it in the input's ``md5`` tag), the source its DVC path."""
    rev = identity().get("git_commit")
    for context, path in splits.items():
        path = Path(path)
        md5 = files.md5_file(path)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(project_root())
        dataset = MetaDataset(DVCDatasetSource(path.as_posix(), rev), name=f"mnist-{path.stem}", digest=md5[:8])
        mlflow.log_input(dataset, context=context, tags={"md5": md5})


def require_run(run_id: str) -> None:
    """Fail early, with one clear line, if the train stage's run is not in the current store."""
    if not run_exists(run_id):
        raise UserError(f"MLflow run {run_id} (from the train stage) is not in {tracking_uri()}; re-run training "
                        "against this store: dvc repro -f train")


def evaluation_run(train_run_id: str) -> contextlib.AbstractContextManager[mlflow.ActiveRun]:
    """The run evaluate logs to. The first evaluation of a model goes into its train run. A later one (the train
    run already has test metrics, e.g. `dvc exp run -S evaluate.seed=1`, where DVC keeps the trained model) gets
    its own run, nested under the train run and tagged ``evaluates_run``: it never rewrites another run's results."""
    require_run(train_run_id)
    train_run = mlflow.MlflowClient().get_run(train_run_id)
    if "test_accuracy" not in train_run.data.metrics:
        return resume_run(train_run_id)
    name = os.environ.get("DVC_EXP_NAME") or f"{train_run.info.run_name} (evaluate)"
    return start_run(name, {"evaluates_run": train_run_id}, parent_run_id=train_run_id)


def log_evaluation(result: dict[str, Any], details: dict[str, Any]) -> None:
    """The evaluate stage's figures as MLflow metrics of the active run: every number of ``result``, the macro and
    weighted averages, accuracy per perturbation, per corruption and per font family; both dicts as JSON."""
    mlflow.log_metrics({k: float(v) for k, v in result.items() if isinstance(v, int | float)})
    for avg in ("macro", "weighted"):
        mlflow.log_metrics({f"test_{avg}_{k.replace('-score', '')}": v for k, v in result[f"{avg}_avg"].items()})
    mlflow.log_metrics({f"robustness_{k}": v for k, v in result["robustness"].items()})
    mlflow.log_metrics({f"corruption_{k}": v for k, v in result["corruption"].items()})
    mlflow.log_metrics({f"ood_font_{f.replace(' ', '_')}": v["accuracy"] for f, v in details["ood_fonts"].items()
                        if v["accuracy"] is not None})  # fmt: skip
    mlflow.log_dict(result, "metrics/evaluate.json")
    mlflow.log_dict(details, "metrics/evaluation.json")


def resume_run(run_id: str) -> contextlib.AbstractContextManager[mlflow.ActiveRun]:
    """Continue the run a previous stage started (evaluate and report add to train's run), ending it honestly."""
    require_run(run_id)
    active = mlflow.start_run(run_id=run_id)
    mlflow.set_tags(_owner())
    return _recorded(active)


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as MLflow params with dotted keys (``augment.zoom``)."""
    out = {}
    for k, v in d.items():
        out.update(flat_params(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def log_model(model: nn.Module, example: torch.Tensor) -> None:
    """Log ``model`` (moved to CPU, eval mode) as the active run's MLflow PyTorch model ``model``: signature and
    input example from ``example``, the ``digits`` package as code, and the torch and mlflow versions pinned."""
    example = example.cpu()
    # contiguous weights: torch.export cannot locate channels_last conv weights in their storage when it packs
    # the model, and warns "No complete tensor found in the group!" for each
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        signature = mlflow.models.infer_signature(example.numpy(), model(example).numpy())
    # MLflow checks the input example by loading the model through pyfunc, on CUDA where there is a GPU, and an
    # exported graph cannot leave the device its weights were exported on (here the CPU): load it there
    os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example.numpy(),
        code_paths=[str(Path(__file__).parent)],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
