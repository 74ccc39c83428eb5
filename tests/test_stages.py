"""The stage scripts as processes on tiny generated data, without DVC: the happy path and bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from helpers import TCMALLOC, clean_env, make_idx_dataset, store_uri

from digits import corruptions, data, fonts, reporting

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BASE_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(path: Path, **sections) -> Path:
    """The repo's params.yaml with some keys replaced (``None`` deletes a key), tiny-model defaults for train."""
    params = copy.deepcopy(BASE_PARAMS)
    params["train"].update(width=4, epochs=1, batch_size=64)
    params["preprocess"].update(val_fraction=0.2)
    for section, changes in sections.items():
        for key, value in changes.items():
            if value is None:
                params[section].pop(key, None)
            else:
                params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage(script: str, *args, params: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = clean_env(MLFLOW_TRACKING_URI=store_uri(tmp))
    return subprocess.run([sys.executable, str(REPO / "src" / script), *map(str, args), "--params", str(params)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    make_idx_dataset(raw, n_train=300, n_test=100, seed=1)
    proc = stage("preprocess.py", raw, tmp_path / "processed", tmp_path / "figures",
                 params=write_params(tmp_path / "params.yaml"), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "processed"


@pytest.fixture
def font_file(processed: Path) -> Path:
    """A stand-in for the render stage's held-out part: 40 processed test digits as two 'font families'."""
    test = data.load_split(processed / "test.pt")
    split = data.Split(test.images[:40], test.labels[:40])
    path = processed.parent / "fonts" / "heldout.pt"
    fonts.save(path, split, torch.arange(40) % 2, ["Family A", "Family B"])
    return path


def run_count(tmp: Path) -> int:
    if not (tmp / "mlflow.db").exists():
        return 0
    client = mlflow.MlflowClient(tracking_uri=store_uri(tmp))
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def test_train_evaluate_report_chain_on_tiny_data(tmp_path: Path, processed: Path, font_file: Path):
    params = write_params(tmp_path / "params.yaml")
    stats = json.loads((processed / "stats.json").read_text())
    assert stats["sizes"] == {"train": 240, "val": 60, "test": 100}
    for figure in ("class_distribution.png", "samples.png"):
        assert (tmp_path / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    train = stage("train.py", processed, tmp_path / "models", tmp_path / "metrics", tmp_path / "figures",
                  params=params, tmp=tmp_path)
    assert train.returncode == 0, train.stderr
    evaluate = stage("evaluate.py", tmp_path / "models", processed / "test.pt", font_file, tmp_path / "metrics",
                     tmp_path / "figures", params=params, tmp=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    zoo = tmp_path / "zoo.csv"  # a small sample of the model-zoo table the report includes
    zoo.write_text("model,description,parameters,epochs_run,train_seconds,machine,test_accuracy,notebook_claim\n"
                   "tiny_cnn,a sample row,1234,1,2.5,\"CPU AVX2, 2 cores\",0.9876,99 %\n")  # fmt: skip
    recipes = tmp_path / "robustness.csv"  # a sample of benchmarks/recipes.py --robustness-csv
    columns = [column for _, _, column in reporting.ROBUSTNESS_COMPARED]
    recipes.write_text(f"recipe,runs,{','.join(columns)}\nclean,4,{','.join(['0.9'] * len(columns))}\n")
    report = stage("report.py", tmp_path / "models", tmp_path / "metrics", tmp_path / "figures", zoo, recipes,
                   tmp_path / "reports" / "report.md", params=params, tmp=tmp_path)
    assert report.returncode == 0, report.stderr

    evaluation = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    confusion = (tmp_path / "metrics" / "plots" / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + 100
    assert evaluation["test_errors"] == round((1 - evaluation["test_accuracy"]) * 100)
    assert evaluation["test_accuracy"] <= evaluation["test_top2_accuracy"] <= 1
    assert 0 <= evaluation["test_ece"] <= 1
    assert evaluation["save_load_identical"] is True
    assert evaluation["save_load_max_abs_logit_diff_mlflow"] < 1e-4
    assert len(evaluation["robustness"]) == 14 and "rotation_-30" in evaluation["robustness"]
    assert list(evaluation["corruption"]) == list(corruptions.CORRUPTIONS)
    assert evaluation["corruption_mean"] == pytest.approx(sum(evaluation["corruption"].values()) / 15)
    assert 0 <= evaluation["corruption_mean_unseen"] <= 1
    assert 0 <= evaluation["ood_font_accuracy"] <= 1
    details = json.loads((tmp_path / "metrics" / "evaluation.json").read_text())
    assert sum(map(sum, details["confusion_matrix"])) == 100
    assert len(details["misclassified"]) == min(evaluation["test_errors"], 36)
    gaps = [e["gap"] for e in details["misclassified"]]
    assert gaps == sorted(gaps, reverse=True)
    by_family = details["ood_fonts"]
    assert list(by_family) == ["Family A", "Family B"] and sum(f["images"] for f in by_family.values()) == 40
    errors = sum(f["errors"] for f in by_family.values())
    assert evaluation["ood_font_accuracy"] == pytest.approx(1 - errors / 40)
    fonts_plot = (tmp_path / "metrics" / "plots" / "fonts.csv").read_text().splitlines()
    assert fonts_plot[0] == "family,accuracy" and len(fonts_plot) == 3
    assert len((tmp_path / "metrics" / "plots" / "corruptions.csv").read_text().splitlines()) == 16
    for name in ("confusion_matrix", "misclassified", "predictions", "reliability", "robustness", "corruptions",
                 "font_errors"):  # fmt: skip
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    text = (tmp_path / "reports" / "report.md").read_text()
    page = (tmp_path / "reports" / "report.html").read_text()
    for section in ("Run identity", "Headline metrics", "What changed", "Per-class metrics (test set)",
                    "Confusion matrix and most confused pairs", "Misclassified digits", "Calibration",
                    "Robustness and out-of-distribution", "Training", "Data",
                    "Comparison with historical MNIST results", "Model zoo"):  # fmt: skip
        assert f"## {section}\n" in text and f"<h2>{section}</h2>" in page, section
    assert "![confusion matrix](../figures/confusion_matrix.png)" in text
    assert "No baseline" in text  # tmp_path is no git repository
    assert "| tiny_cnn | a sample row | 1234 | 1 | 2.5 | CPU AVX2, 2 cores | 98.76% | 99 % |" in text
    assert "99.77%" in text and "LeCun" in text
    assert "| metric | this run | clean (mean of 4) |" in text and "| held-out font digits |" in text
    assert "| Family A | 20 |" in text and "MNIST-C-style" in text
    assert page.count('<img alt="') == 10 and page.count('src="data:image/png;base64,') == 10  # self-contained
    assert run_count(tmp_path) == 1  # train, evaluate and report share one MLflow run
    client = mlflow.MlflowClient(tracking_uri=store_uri(tmp_path))
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["test_top2_accuracy"] == evaluation["test_top2_accuracy"]
    assert run.data.metrics["test_ece"] == pytest.approx(evaluation["test_ece"])
    assert run.data.metrics["save_load_identical"] == 1.0
    folders = ("figures", "report", "metrics", "metrics/plots")
    logged = {a.path for folder in folders for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"report/report.md", "report/report.html", "figures/robustness.png", "figures/reliability.png",
            "metrics/evaluate.json", "metrics/evaluation.json", "metrics/plots/robustness.csv"} <= logged

    # a checkpoint that no longer matches the model logged to MLflow fails the save/load check, writing nothing
    ckpt = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    ckpt["state_dict"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "models" / "model.pt")
    before = (tmp_path / "metrics" / "evaluate.json").read_bytes()
    evaluate = stage("evaluate.py", tmp_path / "models", processed / "test.pt", font_file, tmp_path / "metrics",
                     tmp_path / "figures", params=params, tmp=tmp_path)
    assert evaluate.returncode == 2 and "Traceback" not in evaluate.stderr, evaluate.stderr
    assert "error: reloaded model predicts differently from the in-memory model: mlflow: " in evaluate.stderr
    assert (tmp_path / "metrics" / "evaluate.json").read_bytes() == before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "resnet9000"}, "'train.model' = 'resnet9000' is not in train.zoo; choose one of: "),
        ({"arch": "resnet9000"}, "'train.arch' = 'resnet9000' is not allowed; choose one of 'mlp' or 'cnn'"),
        ({"hidden": [64]}, "'train.hidden' is set, but applies to mlp models only; model 'digits_cnn' is 'cnn'"),
        ({"lr": -0.1}, "'train.lr' = -0.1"),
        ({"epoch": 3}, "unknown key 'train.epoch'. Did you mean 'epochs'?"),
    ],
)
def test_train_rejects_bad_params_before_any_work(tmp_path: Path, processed: Path, changes, message):
    params = write_params(tmp_path / "bad.yaml", train=changes)
    proc = stage("train.py", processed, tmp_path / "models", tmp_path / "metrics", tmp_path / "figures",
                 params=params, tmp=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()
    assert run_count(tmp_path) == 0


def test_train_rejects_corrupted_processed_data(tmp_path: Path, processed: Path):
    (processed / "train.pt").write_bytes(b"not a torch file")
    proc = stage("train.py", processed, tmp_path / "models", tmp_path / "metrics", tmp_path / "figures",
                 params=write_params(tmp_path / "params.yaml"), tmp=tmp_path)
    assert proc.returncode == 2
    assert "train.pt: unreadable or corrupted processed data" in proc.stderr
    assert not (tmp_path / "models").exists()
    assert run_count(tmp_path) == 0


def test_train_rejects_unavailable_device(tmp_path: Path, processed: Path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is present on this machine")
    proc = stage("train.py", processed, tmp_path / "models", tmp_path / "metrics", tmp_path / "figures",
                 params=write_params(tmp_path / "p.yaml", train={"device": "cuda"}), tmp=tmp_path)
    assert proc.returncode == 2 and "train.device=cuda requested" in proc.stderr
    assert not (tmp_path / "models").exists()


def test_preprocess_rejects_truncated_idx(tmp_path: Path):
    raw = tmp_path / "raw"
    make_idx_dataset(raw, n_train=50, n_test=20, seed=0)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    proc = stage("preprocess.py", raw, tmp_path / "processed", tmp_path / "figures",
                 params=write_params(tmp_path / "params.yaml"), tmp=tmp_path)
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte: header promises" in proc.stderr
    assert not (tmp_path / "processed").exists()


def test_preprocess_refuses_an_empty_validation_split(tmp_path: Path):
    raw = tmp_path / "raw"
    make_idx_dataset(raw, n_train=300, n_test=20, seed=0)
    params = write_params(tmp_path / "params.yaml", preprocess={"train_limit": 100, "val_fraction": 0.001})
    proc = stage("preprocess.py", raw, tmp_path / "processed", tmp_path / "figures", params=params, tmp=tmp_path)
    assert proc.returncode == 2
    assert "error: the val split would be empty" in proc.stderr and "preprocess.val_fraction" in proc.stderr
    assert not (tmp_path / "processed").exists()


def test_evaluate_rejects_a_missing_checkpoint(tmp_path: Path, processed: Path, font_file: Path):
    client = mlflow.MlflowClient(tracking_uri=store_uri(tmp_path))
    run = client.create_run(client.create_experiment("digits"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    proc = stage("evaluate.py", tmp_path / "models", processed / "test.pt", font_file, tmp_path / "metrics",
                 tmp_path / "figures", params=write_params(tmp_path / "params.yaml"), tmp=tmp_path)
    assert proc.returncode == 2 and "model.pt: no checkpoint; run the train stage first" in proc.stderr
    assert not (tmp_path / "metrics").exists()


def test_train_without_stats_names_the_stage_to_run(tmp_path: Path, processed: Path):
    (processed / "stats.json").unlink()
    proc = stage("train.py", processed, tmp_path / "models", tmp_path / "metrics", tmp_path / "figures",
                 params=write_params(tmp_path / "params.yaml"), tmp=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "stats.json: not found; run the preprocess stage (dvc repro preprocess)" in proc.stderr


def test_evaluate_with_a_run_missing_from_the_store_is_a_clear_error(tmp_path: Path, processed: Path,
                                                                      font_file: Path):  # fmt: skip
    params = write_params(tmp_path / "params.yaml")
    train = stage("train.py", processed, tmp_path / "models", tmp_path / "metrics", tmp_path / "figures",
                  params=params, tmp=tmp_path)
    assert train.returncode == 0, train.stderr
    (tmp_path / "mlflow.db").unlink()  # e.g. a fresh clone whose models/ came from the DVC cache
    proc = stage("evaluate.py", tmp_path / "models", processed / "test.pt", font_file, tmp_path / "metrics",
                 tmp_path / "figures", params=params, tmp=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is not in sqlite:///" in proc.stderr and "dvc repro -f train" in proc.stderr
    assert not (tmp_path / "metrics" / "evaluate.json").exists()  # failed before writing anything


KEPT_PROBE = """
import ctypes, ctypes.util, sys
from digits import stage

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert stage.keep_freed_memory()
blocks = [libc.malloc(1 << 20) for _ in range(40)]  # 40 MiB of 1 MiB buffers, written, then freed
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in reversed(blocks):
    libc.free(b)
print(libc.mallinfo2().keepcost >> 20)  # MiB free at the heap's top, kept for the next allocations
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_stages_keep_freed_memory_for_reuse_where_glibc_would_give_it_back():
    kept = {}
    for mode in ("glibc", "keep"):
        proc = subprocess.run([sys.executable, "-c", KEPT_PROBE, mode], env=clean_env(), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        kept[mode] = int(proc.stdout)
    assert kept["glibc"] < 8 <= 40 <= kept["keep"], kept  # by default 1 MiB buffers are unmapped when freed


@pytest.mark.skipif(not TCMALLOC, reason="libtcmalloc-minimal4 is not installed (scripts/dev.sh setup installs it)")
def test_tcmalloc_wrapper_preloads_it_unless_glibc_is_asked_for():
    probe = [sys.executable, "-c", "from digits import stage; print(stage.malloc_in_use())"]
    for cmd, extra, want in ((["bash", "scripts/tcmalloc.sh", *probe], {}, "tcmalloc"),
                             (["bash", "scripts/tcmalloc.sh", *probe], {"DIGITS_MALLOC": "glibc"}, "glibc"),
                             (probe, {}, "glibc")):  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=clean_env(**extra), capture_output=True, text=True, timeout=120)
        assert (proc.returncode, proc.stdout.strip()) == (0, want), (cmd, extra, proc.stderr)
