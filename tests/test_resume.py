"""Interrupted training resumes: fit() continued from any epoch's state equals an uninterrupted fit, and the train
stage killed with SIGKILL or SIGTERM mid-run continues from its last epoch checkpoint to the same final metrics and
weights. Same-seed runs are bit-identical (determinism on, CPU)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from helpers import clean_env, git_project, make_idx_dataset, small_data, store_uri
from test_models_and_training import squares
from test_stages import stage, write_params

from digits import device, models, resume, training
from digits.params import AugmentParams, TrainParams

REPO = Path(__file__).resolve().parents[1]
TIMING = ("train_seconds", "train_images_per_second", "peak_rss_mb",  # wall-clock facts, not results
          "inference_images_per_second", "robustness_seconds")

# ------------------------------------------------------------------ fit() resumed in-process

RECIPES = {
    "adamw-onecycle-ema-dropout": {"optimizer": "adamw", "scheduler": "onecycle", "ema_decay": 0.99, "dropout": 0.2},
    "sgd-plateau": {"optimizer": "sgd", "scheduler": "plateau"},
    "adam-step-early-stop": {"optimizer": "adam", "scheduler": "step", "early_stopping_patience": 1},
}


def recipe(name: str) -> TrainParams:
    return TrainParams(model="test", arch="cnn", width=8, head=0, epochs=4, batch_size=32, lr=0.01, seed=0,
                       device="cpu", augment=AugmentParams(rotation_deg=10, zoom=0.1, shift=0.1), **RECIPES[name])


def fresh_model(p: TrainParams) -> torch.nn.Module:
    device.configure(torch.device("cpu"), p.seed, deterministic=True)
    torch.set_num_threads(1)
    return models.build("cnn", 0.2, 0.3, **models.architecture_kwargs(p))


def through_disk(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("stop_after", [1, 2])
def test_fit_resumed_from_a_checkpoint_equals_the_uninterrupted_fit(name: str, stop_after: int):
    p = recipe(name)
    train_xy, val_xy = squares(30, seed=1), squares(10, seed=2)
    full_model = fresh_model(p)
    full = training.fit(full_model, train_xy, val_xy, p)

    saved: dict[int, dict[str, Any]] = {}
    training.fit(fresh_model(p), train_xy, val_xy, p, on_checkpoint=lambda s: saved.setdefault(s["epoch"],
                                                                                                through_disk(s)))
    assert sorted(saved) == list(range(1, len(full.history) + 1))
    resumed_model = fresh_model(p)
    torch.manual_seed(12345)  # a new process has other RNG states until the checkpoint restores them
    resumed = training.fit(resumed_model, train_xy, val_xy, p, resume=saved[stop_after])

    def results(r: training.FitResult) -> list[tuple]:
        return [(e.epoch, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.lr) for e in r.history]

    assert results(resumed) == results(full)
    assert (resumed.best_epoch, resumed.stopped_early) == (full.best_epoch, full.stopped_early)
    a, b = full_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_key_changes_with_every_input(monkeypatch: pytest.MonkeyPatch):
    p = recipe("sgd-plateau").model_dump(mode="json")
    for name in resume.KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    base = resume.run_key(p, {"md5": "a"}, "cpu (2 threads)", "c")
    assert base == resume.run_key(dict(p), {"md5": "a"}, "cpu (2 threads)", "c")
    assert base != resume.run_key({**p, "lr": 0.02}, {"md5": "a"}, "cpu (2 threads)", "c")
    assert base != resume.run_key({**p, "augment": {**p["augment"], "zoom": 0.2}}, {"md5": "a"}, "cpu (2 threads)", "c")
    assert base != resume.run_key(p, {"md5": "b"}, "cpu (2 threads)", "c")
    assert base != resume.run_key(p, {"md5": "a"}, "cpu (1 threads)", "c")
    assert base != resume.run_key(p, {"md5": "a"}, "cpu (2 threads)", "other code")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # scripts/avx2.env: other kernels, other float results
    assert base != resume.run_key(p, {"md5": "a"}, "cpu (2 threads)", "c")


def test_every_kernel_pin_of_the_avx2_imitation_is_in_the_resume_key():
    """A variable that scripts/avx2.env sets to choose kernels must change the resume key, or a run under the
    imitation would resume a native run's checkpoint (Inductor's cache folder chooses no kernel)."""
    assigned = [line.split("=", 1)[0] for line in (REPO / "scripts" / "avx2.env").read_text().splitlines()
                if line[:1].isupper() and "=" in line]  # fmt: skip
    assert assigned and set(assigned) - {"TORCHINDUCTOR_CACHE_DIR"} <= set(resume.KERNEL_VARIABLES)


def test_code_identity_follows_the_package_and_the_script(tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text("a = 1\n")
    before = resume.code_identity(script)
    assert before == resume.code_identity(script) != resume.code_identity()
    script.write_text("a = 2\n")
    assert resume.code_identity(script) != before


def test_store_round_trip_and_foreign_or_damaged_files_are_ignored_loudly(tmp_path: Path, capsys):
    store = resume.Store(tmp_path, "k1")
    assert store.load() is None
    store.save({"epoch": 3, "w": torch.ones(2)})
    state = store.load()
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["k1.pt"]  # atomic write: no temp file left

    (tmp_path / "k2.pt").write_bytes(store.path.read_bytes())  # same content, other run identity
    assert resume.Store(tmp_path, "k2").load() is None
    assert "written for another run identity" in capsys.readouterr().out
    store.path.write_bytes(store.path.read_bytes()[:100])  # truncated by a crash of something else
    assert store.load() is None
    assert "ignoring unusable resume checkpoint" in capsys.readouterr().out
    assert not store.path.exists()


# ------------------------------------------------------------------ the train stage as a real process

EPOCHS = 4


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Processed data big enough that an epoch takes a moment (1200 images), a tiny CNN, 4 epochs."""
    root = tmp_path_factory.mktemp("resume")
    make_idx_dataset(root / "raw", n_train=1200, n_test=100, seed=3)
    params = write_params(root / "params.yaml", train={"epochs": EPOCHS, "width": 8, "batch_size": 32,
                                                       "scheduler": "onecycle", "ema_decay": 0.99})
    proc = stage("preprocess.py", root / "raw", root / "processed", root / "figures", params=params, tmp=root)
    assert proc.returncode == 0, proc.stderr
    return root


def train_cmd(root: Path, out: Path, params: Path) -> list[str]:
    return [sys.executable, str(REPO / "src" / "train.py"), str(root / "processed"), str(out / "models"),
            str(out / "metrics"), str(out / "figures"), "--params", str(params)]


def train_env(out: Path) -> dict[str, str]:
    return clean_env(MLFLOW_TRACKING_URI=store_uri(out))


def train(root: Path, out: Path, params: Path | None = None) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    proc = subprocess.run(train_cmd(root, out, params or root / "params.yaml"), cwd=out, env=train_env(out),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def checkpoints(out: Path) -> list[Path]:
    return sorted((out / ".cache" / "train-resume").glob("*.pt"))


def interrupt(root: Path, out: Path, signum: int, params: Path | None = None) -> subprocess.CompletedProcess:
    """Start the train stage, wait for its first epoch checkpoint, then send ``signum`` to its process group."""
    out.mkdir(exist_ok=True)
    proc = subprocess.Popen(train_cmd(root, out, params or root / "params.yaml"), cwd=out, env=train_env(out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoints(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), stderr
    assert checkpoints(out), "no epoch checkpoint survived the kill"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def results(out: Path) -> dict[str, Any]:
    metrics = json.loads((out / "metrics" / "train.json").read_text())
    state = torch.load(out / "models" / "model.pt", weights_only=True)["state_dict"]
    weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()
    return {"metrics": {k: v for k, v in metrics.items() if k not in TIMING}, "weights_sha256": weights}


def mlflow_runs(out: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=store_uri(out))
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def val_accuracy_steps(out: Path, run_id: str) -> list[int]:
    client = mlflow.MlflowClient(tracking_uri=store_uri(out))
    return sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy"))


@pytest.fixture(scope="module")
def uninterrupted(small: Path) -> dict[str, Any]:
    out = small / "uninterrupted"
    train(small, out)
    assert checkpoints(out) == []  # removed after the successful run
    return results(out)


def test_same_seed_runs_are_bit_identical(small: Path, uninterrupted: dict[str, Any]):
    train(small, small / "again")
    assert results(small / "again") == uninterrupted
    assert uninterrupted["metrics"]["epochs_run"] == EPOCHS


def test_sigkill_mid_run_then_rerun_resumes_to_the_same_result(small: Path, uninterrupted: dict[str, Any]):
    out = small / "killed"
    interrupt(small, out, signal.SIGKILL)
    assert not (out / "models" / "model.pt").exists()
    [stale] = mlflow_runs(out)
    assert stale.info.status == "RUNNING"  # SIGKILL cannot be caught; the resumed run reopens this run

    proc = train(small, out)
    assert "resuming from epoch " in proc.stdout
    assert results(out) == uninterrupted
    [run] = mlflow_runs(out)
    assert run.info.run_id == stale.info.run_id and run.info.status == "FINISHED"
    assert val_accuracy_steps(out, run.info.run_id) == list(range(1, EPOCHS + 1))
    assert int(run.data.tags["resumed_from_epoch"]) >= 2
    assert checkpoints(out) == []


def test_sigterm_ends_the_run_killed_and_the_rerun_finishes_it(small: Path, uninterrupted: dict[str, Any]):
    out = small / "terminated"
    proc = interrupt(small, out, signal.SIGTERM)
    assert "interrupted by SIGTERM" in proc.stderr and "Traceback" not in proc.stderr
    [run] = mlflow_runs(out)
    assert run.info.status == "KILLED"
    assert not (out / "models").exists() or not any((out / "models").iterdir())

    assert "resuming from epoch " in train(small, out).stdout
    assert results(out) == uninterrupted
    [run] = mlflow_runs(out)
    assert run.info.status == "FINISHED"


def test_resume_without_the_interrupted_run_logs_the_restored_epochs_to_a_new_run(small: Path, uninterrupted):
    out = small / "store-lost"
    interrupt(small, out, signal.SIGKILL)
    (out / "mlflow.db").unlink()  # e.g. the store was reset between the crash and the rerun
    assert "resuming from epoch " in train(small, out).stdout
    assert results(out) == uninterrupted
    [run] = mlflow_runs(out)
    assert run.info.status == "FINISHED" and val_accuracy_steps(out, run.info.run_id) == list(range(1, EPOCHS + 1))


def test_changed_train_param_never_resumes_a_stale_checkpoint(small: Path):
    out = small / "changed"
    interrupt(small, out, signal.SIGKILL)
    [stale_checkpoint] = checkpoints(out)
    changed = write_params(small / "changed.yaml", train={"epochs": EPOCHS, "width": 8, "batch_size": 32,
                                                           "scheduler": "onecycle", "ema_decay": 0.99, "lr": 0.002})
    [stale_run] = mlflow_runs(out)
    proc = train(small, out, changed)
    assert "resuming" not in proc.stdout
    runs = {r.info.run_id: r for r in mlflow_runs(out)}
    assert runs[stale_run.info.run_id].info.status == "KILLED"  # its process is gone: not left RUNNING
    new = [r for r in mlflow_runs(out) if r.data.params.get("lr") == "0.002"]
    assert len(new) == 1 and val_accuracy_steps(out, new[0].info.run_id) == list(range(1, EPOCHS + 1))
    assert checkpoints(out) == [stale_checkpoint]  # the other run's checkpoint is kept for that run


# ------------------------------------------------------------------ the real pipeline: dvc repro killed, then again


def dvc_repro(project: Path, **popen: Any) -> subprocess.Popen:
    """`dvc repro evaluate`: the stages up to the metrics compared here (report and register add nothing to them)."""
    return subprocess.Popen(["dvc", "repro", "evaluate"], cwd=project, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.e2e
def test_dvc_repro_killed_mid_training_resumes_to_the_same_metrics(tmp_path_factory, mnist_raw: Path):
    small = small_data(mnist_raw, 2000, 500, width=8, epochs=4, batch_size=64)
    baseline = git_project(tmp_path_factory.mktemp("baseline") / "digits", REPO, small)
    out, _ = dvc_repro(baseline).communicate(timeout=900)
    assert "Running stage 'evaluate'" in out, out

    project = git_project(tmp_path_factory.mktemp("killed") / "digits", REPO, small)
    proc = dvc_repro(project, start_new_session=True)
    deadline = time.monotonic() + 600
    while not checkpoints(project) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the train stage, as a crash or the OOM killer would
    out, _ = proc.communicate(timeout=60)
    assert checkpoints(project), out
    assert "Running stage 'evaluate'" not in out

    again, _ = (p := dvc_repro(project)).communicate(timeout=900)
    assert p.returncode == 0, again
    assert "resuming from epoch " in again and "Running stage 'download'" not in again
    train_metrics = [{k: v for k, v in json.loads((d / "metrics" / "train.json").read_text()).items()
                      if k not in TIMING} for d in (baseline, project)]
    assert train_metrics[0] == train_metrics[1]
    test_metrics = [{k: v for k, v in json.loads((d / "metrics" / "evaluate.json").read_text()).items()
                     if k not in TIMING} for d in (baseline, project)]
    assert test_metrics[0] == test_metrics[1]
    assert checkpoints(project) == []
    statuses = [r.info.status for r in mlflow_runs(project)]
    assert statuses == ["FINISHED"]  # the killed run was reopened and finished, not left RUNNING
