"""End to end: the real `dvc` and the real MLflow store in a temporary git repository, on a small slice of MNIST."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from helpers import REPO, TCMALLOC, git_project, run, small_data, store_uri
from helpers import mlflow_runs as runs

from digits.files import md5_file

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_raw) -> Path:
    """conftest's small-data project, but with the evaluate stage compiling its inference model, as by default."""
    return git_project(tmp_path_factory.mktemp("clone") / "digits", REPO,
                       small_data(mnist_raw, 3000, 1000, compile_inference=True, width=8, epochs=1, batch_size=128))
PLOT_TITLES = ("Loss", "Accuracy", "Learning rate", "Per-class F1 (test)", "Confusion matrix (test)",
               "Reliability (test; accuracy per confidence bin)", "Robustness (test accuracy under perturbations)",
               "MNIST-C-style corruptions (test accuracy)", "Held-out font digits (accuracy per font family)")
PNGS = ("class_distribution", "samples", "training_curves", "confusion_matrix", "misclassified", "predictions",
        "reliability", "robustness", "corruptions", "font_errors")


def test_repro_runs_every_stage_and_logs_one_mlflow_run(project: Path):
    repro = run(["dvc", "repro"], project, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")  # samples in a short run
    out = repro.stdout
    assert not re.search("warning|CUDA_HOME|Downloading artifacts", repro.stderr, re.IGNORECASE), repro.stderr
    for stage in ("download", "preprocess", "render", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    for rel in ("data/raw/train-images-idx3-ubyte", "data/processed/train.pt", "data/processed/stats.json",
                "data/fonts/selection.pt", "data/fonts/heldout.pt", "data/fonts/fonts.json",
                "models/model.pt", "models/run.json", "metrics/plots/train_curves.csv", "metrics/evaluation.json",
                *[f"metrics/plots/{n}.csv" for n in ("confusion", "per_class", "calibration", "robustness")],
                *[f"reports/figures/{n}.png" for n in PNGS], "reports/report.md", "reports/report.html"):
        assert (project / rel).is_file(), rel
    stats = json.loads((project / "data/processed/stats.json").read_text())
    assert stats["sizes"]["train"] + stats["sizes"]["val"] == 3000 and stats["sizes"]["test"] == 1000
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert 0.5 < evaluation["test_accuracy"] <= 1.0  # a 1-epoch tiny CNN on 2.7k images still learns
    report = (project / "reports/report.md").read_text()
    for section in ("## Run identity", "## Headline metrics", "## What changed", "## Per-class metrics",
                    "## Misclassified digits", "## Calibration", "## Robustness", "## Comparison with historical"):
        assert section in report
    assert "6bbc9ace898e44ae57da46a324031adb" in report
    assert evaluation["save_load_identical"] is True

    [r] = runs(project)
    assert r.info.status == "FINISHED"
    trained = json.loads((project / "models/run.json").read_text())["params"]
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"] is None  # the recipe's lr ...
    assert r.data.params["lr"] == str(trained["lr"]) == "0.005"  # ... is logged, and recorded with the model
    assert r.data.params["width"] == str(trained["width"]) == "8"  # a key the test's params.yaml sets
    assert r.data.params["model"] == trained["model"] == "digits_cnn" and "hidden" not in r.data.params
    assert r.data.metrics["test_accuracy"] == pytest.approx(evaluation["test_accuracy"])
    train = json.loads((project / "metrics/train.json").read_text())  # dvc.yaml runs train under scripts/tcmalloc.sh
    assert train["malloc"] == r.data.tags["malloc"] == ("tcmalloc" if TCMALLOC else "glibc")
    assert r.data.tags["machine"] == train["machine"]
    assert r.data.tags["git_commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert r.data.tags["data_md5.t10k-labels-idx1-ubyte"] == "27ae3e4e09519cfbb04c329615203637"
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert r.data.params["device"].startswith(expected_device) and r.data.tags["device"] == r.data.params["device"]
    client = mlflow.MlflowClient(tracking_uri=store_uri(project))
    history = client.get_metric_history(r.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]
    [logged] = [m for m in client.search_logged_models(experiment_ids=[r.info.experiment_id]) if m.name == "model"]
    assert logged.source_run_id == r.info.run_id
    assert json.loads((project / "models/run.json").read_text())["run_id"] == r.info.run_id

    # MLflow as its users expect it: a model-training experiment, a name that tells workspace runs apart, the
    # data splits as dataset inputs, system metrics
    assert client.get_experiment(r.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert r.info.run_name == f"digits_cnn@{r.data.tags['git_commit'][:7]}"
    inputs = {i.dataset.name: i for i in r.inputs.dataset_inputs}
    assert sorted(inputs) == ["mnist-test", "mnist-train", "mnist-val"]
    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        dataset, tags = inputs[f"mnist-{split}"].dataset, {t.key: t.value for t in inputs[f"mnist-{split}"].tags}
        md5 = md5_file(project / f"data/processed/{split}.pt")
        assert (dataset.digest, tags["md5"], tags["mlflow.data.context"]) == (md5[:8], md5, context)
        assert dataset.source_type == "dvc"
        assert json.loads(dataset.source) == {"path": f"data/processed/{split}.pt", "rev": r.data.tags["git_commit"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(r.data.metrics)

    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    html = (project / "plots_html" / "index.html").read_text()
    for title in (*PLOT_TITLES, *[f"{n}.png" for n in PNGS]):
        assert title in html, title
    shutil.rmtree(project / "plots_html")
    shown = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    # every plot once: the data files are drawn by their definitions only, never again as raw files
    assert sorted(shown) == sorted([*PLOT_TITLES, *[f"reports/figures/{n}.png" for n in PNGS]])

    again = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in again
    assert "up to date" in run(["dvc", "status"], project).stdout
    run(["git", "add", "-A"], project)  # the baseline that experiments are compared with
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline run"], project)


def test_exp_run_with_changed_lr_reruns_train_onwards_and_adds_a_run(project: Path):
    before = len(runs(project))
    out = run(["dvc", "exp", "run", "-S", "train.lr=0.01"], project).stdout
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert "Running stage 'download'" not in out and "Running stage 'preprocess'" not in out
    new = runs(project)[before:]
    assert len(new) == 1
    r = new[0]
    assert r.data.params["lr"] == "0.01" and r.info.status == "FINISHED"
    assert r.data.tags["dvc_exp_name"]
    assert "test_accuracy" in r.data.metrics
    assert "train.lr" in run(["dvc", "params", "diff", "--md"], project).stdout
    assert "test_accuracy" in run(["dvc", "metrics", "diff", "--md"], project).stdout
    shown = run(["dvc", "exp", "show", "--md"], project).stdout
    assert r.data.tags["dvc_exp_name"] in shown
    report = (project / "reports/report.md").read_text()  # the experiment's report, compared with HEAD's metrics
    assert "Baseline: the metrics committed at `HEAD`." in report and "| test accuracy | " in report


def test_an_evaluate_only_experiment_gets_its_own_run_and_plots_diff_draws_both(project: Path):
    """`-S evaluate.seed=2` keeps the trained model (DVC skips train): the new evaluation goes into a new run,
    nested under the train run, which keeps its own results; `dvc plots diff` draws every plot for the last two
    experiments."""
    train_run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=store_uri(project))
    train_metrics = client.get_run(train_run_id).data.metrics
    before = len(runs(project))
    out = run(["dvc", "exp", "run", "-S", "evaluate.seed=2"], project).stdout
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    [new] = runs(project)[before:]
    assert new.data.tags["evaluates_run"] == new.data.tags["mlflow.parentRunId"] == train_run_id
    assert new.info.run_name == new.data.tags["dvc_exp_name"] and new.info.status == "FINISHED"
    assert "robustness_mean" in new.data.metrics and [i.dataset.name for i in new.inputs.dataset_inputs] == [
        "mnist-test"]
    assert client.get_run(train_run_id).data.metrics == train_metrics  # nothing rewritten in the train run
    assert json.loads((project / "models/evaluation_run.json").read_text()) == {
        "run_id": new.info.run_id, "evaluates": train_run_id}
    assert {a.path for a in client.list_artifacts(new.info.run_id, "report")} == {"report/report.md",
                                                                                   "report/report.html"}
    assert f"evaluated in MLflow run | `{new.info.run_id}`" in (project / "reports/report.md").read_text()

    # `dvc plots diff` draws every plot for both experiments
    names = run(["dvc", "exp", "list", "--name-only"], project).stdout.split()
    assert len(names) >= 2
    first, second = names[-2:]
    diff = json.loads(run(["dvc", "plots", "diff", first, second, "--json"], project).stdout)["data"]
    assert set(PLOT_TITLES) <= set(diff)
    for title in PLOT_TITLES:
        revisions = {rev for entry in diff[title] for rev in entry.get("revisions", [])}
        assert {first, second} <= revisions, (title, revisions)
    out = run(["dvc", "plots", "diff", first, second, "-o", "diff_html"], project)
    assert (project / "diff_html" / "index.html").is_file(), out.stdout
    shutil.rmtree(project / "diff_html")


def test_temp_experiment_logs_to_the_main_store(project: Path):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/...; its run must land in the repository's own mlflow.db."""
    before = len(runs(project))
    run(["dvc", "exp", "run", "--temp", "-S", "train.lr=0.02"], project)
    new = runs(project)[before:]
    assert [r.data.params["lr"] for r in new] == ["0.02"]
    assert new[0].info.artifact_uri.startswith((project / "mlartifacts").resolve().as_uri())
