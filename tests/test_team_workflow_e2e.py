"""End to end, the team's day-to-day workflow in a temporary git repository with the small-data params:
the default DVC remote (push, then pull in a fresh clone), queued experiments landing in the one MLflow store, and
the pull-request report of a branch that changes `train.lr` against `main`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from helpers import BIN, clean_env, git_commit, mlflow_runs, run, stop_processes

from digits import params
from digits.files import md5_file

pytestmark = pytest.mark.e2e
RESTORED = ("data/raw/train-images-idx3-ubyte", "data/processed/train.pt", "data/processed/test.pt",
            "models/model.pt", "models/run.json")


@pytest.fixture(scope="module")
def baseline(project: Path) -> Iterator[Path]:
    """The project after a real `dvc repro`, its outputs committed on `main`. Afterwards, pass or fail, its queue
    is stopped and no `dvc exp queue-worker` outlives the module: an idle worker would otherwise linger for minutes
    and skew whatever runs next on the machine."""
    run(["dvc", "repro"], project)
    git_commit(project, "dvc repro")
    yield project
    assert not stop_queue(project), "queue workers still running 60 s after `dvc queue stop` (killed)"


def test_default_remote_push_then_pull_into_a_fresh_clone(baseline: Path):
    storage = baseline.parent / "digits-dvc-storage"  # the default remote: a directory next to the checkout
    assert "storage" in run(["dvc", "remote", "list"], baseline).stdout
    assert not storage.exists()
    run(["dvc", "push"], baseline)
    assert storage.is_dir() and any(storage.rglob("*"))

    clone = baseline.parent / "digits-clone"  # next to the original, so `../digits-dvc-storage` is the same
    run(["git", "clone", "-q", str(baseline), str(clone)], baseline.parent)
    assert not (clone / "models/model.pt").exists()
    run(["dvc", "pull"], clone)
    for rel in RESTORED:
        assert md5_file(clone / rel) == md5_file(baseline / rel), rel
    assert "up to date" in run(["dvc", "status"], clone).stdout
    shutil.rmtree(clone)


def queue_idle(project: Path) -> bool:
    status = run(["dvc", "queue", "status"], project).stdout
    return not re.search(r"\b(Queued|Running)\b", status)


def start_queue(project: Path, jobs: int) -> None:
    """`dvc queue start -j jobs`. Its workers are forked with the command's own stdout and stderr, so they are not
    pipes here: through a captured pipe the call would not return before the last worker exits."""
    log = project / ".dvc/tmp/queue-start.log"
    with log.open("w") as out:
        proc = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=project, env=clean_env(),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, log.read_text()


def stop_queue(project: Path) -> dict[int, str]:
    """`dvc queue stop`, then wait for every `dvc exp queue-worker` to exit; return those killed after 60 s.

    A worker left idle after its queue ran empty shuts itself down seconds later; a task queued meanwhile can be
    taken by that worker as it exits and then never runs, so `dvc exp run --run-all` would wait for ever.
    """
    run(["dvc", "queue", "stop"], project, check=False)
    return stop_processes(lambda cmdline: "queue-worker" in cmdline, grace_s=60)


def queue_report(project: Path) -> str:
    """What to show when the queue does not finish: its status, each task's log and the workers' logs."""
    status = run(["dvc", "queue", "status"], project, check=False).stdout
    parts = [status]
    for task in re.findall(r"^([0-9a-f]{7})\s", status, flags=re.MULTILINE):
        logs = run(["dvc", "queue", "logs", task], project, check=False)
        parts.append(f"--- dvc queue logs {task}\n{logs.stdout[-3000:]}{logs.stderr[-1000:]}")
    for worker_log in sorted((project / ".dvc/tmp/exps/celery").glob("*.out")):
        parts.append(f"--- {worker_log.name}\n" + worker_log.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


def wait_for_queue(project: Path, timeout_s: float = 1200) -> None:
    deadline = time.monotonic() + timeout_s
    while not queue_idle(project):
        if time.monotonic() > deadline:
            report = queue_report(project)
            run(["dvc", "queue", "stop", "--kill"], project, check=False)  # no workers left behind
            pytest.fail(f"queued experiments not done after {timeout_s:.0f} s:\n{report}")
        time.sleep(3)


def shown_experiments(project: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its data (params, metrics)."""
    shown = {}
    for baseline in json.loads(run(["dvc", "exp", "show", "--json"], project).stdout):  # workspace, then HEAD
        for experiment in baseline.get("experiments") or []:
            shown.update((rev["name"], rev["data"]) for rev in experiment["revs"])
    return shown


def check_new_runs(project: Path, before: int, lrs: set[str]) -> None:
    """The runs added since ``before`` are one per learning rate, finished, tagged with an experiment name that
    `dvc exp show` lists with that learning rate and the same test accuracy."""
    new = mlflow_runs(project)[before:]
    assert {r.data.params["lr"] for r in new} == lrs and len(new) == len(lrs)
    shown = shown_experiments(project)
    for r in new:
        assert r.info.status == "FINISHED"
        name = r.data.tags["dvc_exp_name"]
        assert r.info.run_name == name and name in shown, (name, list(shown))
        data = shown[name]
        assert str(data["params"]["params.yaml"]["data"]["train"]["lr"]) == r.data.params["lr"]
        accuracy = data["metrics"]["metrics/evaluate.json"]["data"]["test_accuracy"]
        assert r.data.metrics["test_accuracy"] == pytest.approx(accuracy)
        assert r.info.artifact_uri.startswith((project / "mlartifacts").resolve().as_uri())
    table = run(["dvc", "exp", "show", "--md"], project).stdout
    assert all(r.data.tags["dvc_exp_name"] in table for r in new) and "test_accuracy" in table


def run_queue(project: Path, jobs: int = 2) -> None:
    """`dvc queue start -j JOBS`, wait until it is done, stop its workers; fail if a task failed."""
    start_queue(project, jobs=jobs)
    try:
        wait_for_queue(project)
    finally:
        killed = stop_queue(project)
    assert not killed, f"queue workers still running 60 s after `dvc queue stop` (killed): {killed}"
    status = run(["dvc", "queue", "status"], project).stdout
    assert "Failed" not in status, queue_report(project)


def test_grid_sweep_queues_one_experiment_per_value_and_runs_two_at_a_time(baseline: Path):
    """The README's sweep: DVC's grid syntax queues three experiments; the queue runs them into the one store
    (up to evaluate, whose test accuracy is checked: report and register add nothing to this)."""
    before = len(mlflow_runs(baseline))
    queued = run(["dvc", "exp", "run", "--queue", "evaluate", "-S", "train.lr=0.001,0.003,0.01"], baseline).stdout
    assert queued.count("Queued experiment") == 3, queued
    run_queue(baseline)
    check_new_runs(baseline, before, {"0.001", "0.003", "0.01"})


# One zoo model of each kind: the default (CNN, AdamW, OneCycle, EMA, the robustness augmentations), an MLP with
# Xavier init, Adam and a step schedule, a BatchNorm MLP, and a CNN with a plateau schedule and early stopping. That a
# set train key overrides *every* zoo recipe is checked in-process, per model, by test_params.py; here the whole chain
# runs.
ZOO_KINDS = ("digits_cnn", "mlp_512_256_128", "mlp_bn_1024_512_256_128", "cnn_32_64_keras")


def test_zoo_models_train_with_the_lr_given_on_the_command_line(baseline: Path):
    """`dvc exp run -S train.model=M -S train.lr=X` for zoo models of each kind (train stage only, 1 epoch, in the
    workspace: no queue to start per model): `dvc exp show`, the MLflow run and the checkpoint all say X, and the
    rest of the recipe is M's."""
    committed = yaml.safe_load((baseline / "params.yaml").read_text())
    committed["train"]["width"] = None  # `-S train.width=null` below: the test project sets width 8
    assert set(ZOO_KINDS) <= set(committed["train"]["zoo"])
    try:
        for model in ZOO_KINDS:
            before = len(mlflow_runs(baseline))
            run(["dvc", "exp", "run", "train", "-S", f"train.model={model}", "-S", "train.lr=0.0123",
                 "-S", "train.epochs=1", "-S", "train.width=null"], baseline)  # fmt: skip
            [r] = mlflow_runs(baseline)[before:]
            recipe = params.validate({**committed, "train": {**committed["train"], "model": model}}).train
            checkpoint = torch.load(baseline / "models/model.pt", weights_only=True)["params"]
            assert checkpoint == recipe.model_dump() | {"lr": 0.0123, "epochs": 1}, model
            assert (r.data.params["model"], r.data.params["lr"]) == (model, "0.0123")
            assert r.data.params.get("width") == (str(recipe.width) if recipe.arch == "cnn" else None)
            shown = shown_experiments(baseline)[r.data.tags["dvc_exp_name"]]["params"]["params.yaml"]["data"]
            assert (shown["train"]["model"], shown["train"]["lr"]) == (model, 0.0123)
    finally:
        run(["git", "checkout", "--", "."], baseline)
        run(["dvc", "checkout", "--force"], baseline)


def test_run_all_runs_what_is_queued(baseline: Path):
    before = len(mlflow_runs(baseline))
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.02"], baseline)
    try:
        run(["dvc", "exp", "run", "--run-all"], baseline)
        wait_for_queue(baseline)
    finally:
        killed = stop_queue(baseline)
    assert not killed, f"queue workers still running 60 s after `dvc queue stop` (killed): {killed}"
    check_new_runs(baseline, before, {"0.02"})


def test_pr_report_shows_the_branch_changes_against_main(baseline: Path, tmp_path: Path):
    base_lr = yaml.safe_load((baseline / "params.yaml").read_text())["train"]["lr"]
    base_accuracy = json.loads((baseline / "metrics/evaluate.json").read_text())["test_accuracy"]
    run(["git", "checkout", "-q", "-b", "faster-lr"], baseline)
    params = yaml.safe_load((baseline / "params.yaml").read_text())
    params["train"]["lr"] = 0.05
    (baseline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], baseline)
    git_commit(baseline, "train.lr 0.05")
    accuracy = json.loads((baseline / "metrics/evaluate.json").read_text())["test_accuracy"]
    assert accuracy != base_accuracy  # the setup this test relies on: the metric moved

    out_dir = tmp_path / "pr"
    printed = pr_report(baseline, "main", out_dir)
    report = (out_dir / "report.md").read_text()
    assert printed == str(out_dir / "report.md")
    assert report.startswith("<!-- digits-pr-review -->")
    headline = next(line for line in report.splitlines() if line.startswith("| test accuracy |"))
    assert re.split(r"\s*\|\s*", headline)[2:4] == [f"{base_accuracy:.2%}", f"{accuracy:.2%}"]
    train_machine = json.loads((baseline / "metrics/train.json").read_text()).get("machine", "machine not recorded")
    assert f"| training time (s), {train_machine} |" in report  # main and the branch ran on this machine
    assert report.index(headline) < report.index("<details>")  # the headline first, the full diffs folded
    params_rows = [line for line in report.splitlines() if line.startswith("| params.yaml")]
    assert base_lr is None  # main leaves lr to the recipe: null, which `dvc params diff` shows as "-"
    assert [re.split(r"\s*\|\s*", row)[2:5] for row in params_rows] == [["train.lr", "-", "0.05"]]
    metric_row = next(line for line in report.splitlines() if "| test_accuracy " in line)
    assert [float(x) for x in re.split(r"\s*\|\s*", metric_row)[3:5]] == pytest.approx([base_accuracy, accuracy],
                                                                                         abs=1e-5)
    figures = dict(re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", report))
    assert "reports/figures/training_curves.png" in figures
    assert "reports/figures/training_curves.png on main" in figures
    assert "reports/figures/samples.png" not in figures  # preprocess did not change: the figure is the same
    for name, link in figures.items():
        assert (out_dir / link).is_file(), (name, link)
    new = out_dir / figures["reports/figures/training_curves.png"]
    assert new.read_bytes() == (baseline / "reports/figures/training_curves.png").read_bytes()

    run(["git", "checkout", "-q", "main"], baseline)  # metrics and figures are git-tracked: back to main's
    pr_report(baseline, "HEAD", out_dir)
    report = (out_dir / "report.md").read_text()
    for nothing in ("No parameter changed.", "No metric changed.", "No figure changed."):
        assert nothing in report
    assert "| test accuracy |" in report and "<details>" not in report


def pr_report(project: Path, base: str, out_dir: Path) -> str:
    """Run the project's scripts/pr_report.py as a user would; return what it printed."""
    cmd = [str(BIN / "python"), "scripts/pr_report.py", base, "--out-dir", str(out_dir)]
    return run(cmd, project).stdout.strip()
