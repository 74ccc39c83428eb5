"""The benchmark scripts run end to end on tiny data: the multi-seed recipe comparison (with resume), the
data-path benchmark (ours vs. the per-sample torchvision path), ours vs. PyTorch's MNIST example to a target, time
to accuracy with its floor, the training loop's speed settings, the app under load, the training augmentations
(ours vs. kornia) and the model-zoo table read from an MLflow store."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, clean_env, closed_port, make_idx_dataset, store_uri
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from digits import augmentations, data, device, files, models, params, tracking, training

TINY = ["--set=device=cpu", "--set=epochs=1", "--set=width=4", "--set=head=8", "--set=batch_size=32",
        "--set=ema_decay=0", "--set=augment.rotation_deg=5"]  # fmt: skip


def script(name: str, *args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:  # fmt: skip
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=cwd, env=clean_env(**env or {}),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if check and proc.returncode != 0:
        pytest.fail(f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    """data/processed as the preprocess stage writes it, with 200/60/60 random images, and params.yaml."""
    g = torch.Generator().manual_seed(0)
    out = tmp_path / "data" / "processed"
    for name, n in (("train", 200), ("val", 60), ("test", 60)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        data.save_split(out / f"{name}.pt", data.Split(images, torch.arange(n) % 10))
    files.write_json(out / "stats.json", {"mean": 0.5, "std": 0.29})
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_recipe_comparison_records_each_run_resumes_and_refuses_changed_recipes(processed: Path) -> None:
    out = processed / "runs.jsonl"
    args = [*TINY, "--seeds=1,2", "--jobs=2", f"--out={out}", "--recipe", "a", "--recipe", "b", "lr=0.01"]
    first = script("recipes.py", *args, cwd=processed)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["recipe"], r["seed"]) for r in rows) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert {r["params"]["lr"] for r in rows if r["recipe"] == "b"} == {0.01}
    assert all(0 <= r["val_accuracy"] <= 1 and r["best_epoch"] >= 1 for r in rows)
    assert "| a | 2 |" in first.stdout and "| b | 2 |" in first.stdout

    earlier = processed / "earlier.jsonl"  # another comparison's run, summarised first with --also
    earlier.write_text(json.dumps(rows[0] | {"recipe": "earlier"}) + "\n")
    again = script("recipes.py", *args, f"--also={earlier}", cwd=processed)
    assert "0 runs to do (4 already in" in again.stdout and len(out.read_text().splitlines()) == 4
    table = again.stdout[again.stdout.index("| recipe |"):]
    assert table.index("| earlier | 1 |") < table.index("| a | 2 |") < table.index("| b | 2 |")
    clash = script("recipes.py", *args, f"--also={out}", cwd=processed, check=False)
    assert clash.returncode != 0 and "--also: 'a', 'b' recorded there too" in clash.stderr

    changed = script("recipes.py", *TINY, "--seeds=1", f"--out={out}", "--recipe", "a", "lr=0.02", cwd=processed,
                     check=False)  # fmt: skip
    assert changed.returncode != 0 and "recipe 'a' was run with other params" in changed.stderr

    # The same seed again gives the same run, figure for figure, when it runs the same way: `--jobs=2` again, so
    # the same threads per run. A different thread count sums in another order and may differ in the last digits.
    repeat = processed / "repeat.jsonl"
    script("recipes.py", *TINY, "--seeds=1", "--jobs=2", f"--out={repeat}", "--recipe", "a", cwd=processed)
    (again_a1,) = [json.loads(line) for line in repeat.read_text().splitlines()]
    (a1,) = [r for r in rows if (r["recipe"], r["seed"]) == ("a", 1)]
    assert again_a1["threads"] == a1["threads"]
    assert {k: again_a1[k] for k in ("val_accuracy", "val_loss", "test_accuracy")} == {
        k: a1[k] for k in ("val_accuracy", "val_loss", "test_accuracy")}  # fmt: skip


def _state(pid: int) -> tuple[str, int] | None:
    """A live process's state letter and parent pid (Linux /proc); None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _children(pid: int) -> set[int]:
    states = {int(p.name): _state(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    return {child for child, state in states.items() if state and state[1] == pid}


def _running(pid: int) -> bool:
    return (_state(pid) or ("Z", 0))[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_recipe_comparison_leaves_no_worker_training(processed: Path, sig: signal.Signals) -> None:
    out = processed / "runs.jsonl"
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "recipes.py"), *TINY, "--set=epochs=500",
                             "--seeds=1,2", "--jobs=2", f"--out={out}", "--recipe", "a"], cwd=processed,
                            env=clean_env(), stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "2 runs to do" in proc.stdout.readline()
        deadline = time.monotonic() + 60
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:  # the pool's two workers
            time.sleep(0.2)
        assert len(workers) >= 2
        proc.send_signal(sig)  # at once: the workers may still be starting, and must end all the same
        assert proc.wait(timeout=30) == 128 + sig
        deadline = time.monotonic() + 15
        while (alive := {w for w in workers if _running(w)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"workers still running after the main process stopped: {alive}"
        assert not out.exists() or not out.read_text()  # no run had finished
    finally:
        proc.kill()
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


def test_data_path_benchmark_compares_both_paths(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "data" / "raw", n_train=256, n_test=64)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = script("data_paths.py", "--model=digits_cnn_fast", *TINY, cwd=tmp_path)
    table = proc.stdout
    assert "cpu (" in table and "| metric | ours | naive | naive/ours |" in table
    for metric in ("final_accuracy", "seconds_to_99.5", "train_images_per_second", "inference_images_per_second"):
        assert f"| {metric} |" in table
    assert "ours test accuracy per epoch: [" in table and "naive test accuracy per epoch: [" in table
    # the default's robustness augmentations have no counterpart on the naive path: refused, not compared unlike
    refused = script("data_paths.py", "--model=digits_cnn", *TINY, cwd=tmp_path, check=False)
    assert refused.returncode == 1
    assert "digits_cnn: the naive path has no elastic_px, thickness, outline" in refused.stderr
    assert "--paths ours" in refused.stderr
    ours = script("data_paths.py", "--model=digits_cnn", "--paths=ours", *TINY, cwd=tmp_path).stdout  # ours alone: runs
    assert "| metric | ours |" in ours and "naive" not in ours.split("| metric |")[1]


def test_peer_benchmark_races_the_example_recipe_on_each_instruction_set(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "data" / "raw", n_train=256, n_test=64)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = script("peer.py", "--model=digits_cnn_fast", *TINY, "--limit=128", "--max-epochs-peer=3", "--threads=1",
                  "--target=0", cwd=tmp_path)  # fmt: skip
    *table, line = proc.stdout.strip().splitlines()
    r = json.loads(line)
    assert r["threads"] == 1 and r["limit"] == 128 and r["target_ratio"] == 20
    # an AVX-512 CPU also runs the pair as an AVX2-only one would (scripts/avx2.env), labelled so; others natively
    classes = ["CPU AVX-512,", "CPU AVX2 (imitated on AVX-512),"] if device.cpu_isa() == "AVX-512" else ["CPU "]
    assert len(r["results"]) == len(classes)
    for result, machine in zip(r["results"], classes, strict=True):
        assert result["machine"].startswith(machine) and result["peer"]["machine"] == result["machine"]
        for run in (result["peer"], result["ours"]):  # target 0: reached after the first epoch, where each stops
            assert run["epochs"] == 1 and len(run["curve"]) == 1 and run["device"] == "cpu (1 threads)"
            assert run["seconds_to_target"] == run["train_seconds"] == run["curve"][0][1] > 0
        assert result["ratio"] == round(result["peer"]["seconds_to_target"] / result["ours"]["seconds_to_target"], 2)
        assert not result["ratio_is_lower_bound"]
    text = "\n".join(table)
    header = "| run | " + " | ".join(f"{x['machine']}: seconds to target | epochs | best test accuracy"
                                     for x in r["results"])  # fmt: skip
    assert header in text and "| peer | " in text and "| ours | " in text and "target: peer/ours ≥ 20×" in text
    assert "| peer/ours | " + " | ".join(f"{x['ratio']:.1f}× |  | " for x in r["results"]) in text + " "
    assert proc.stderr.count("[peer] epoch 1: test") == proc.stderr.count("[ours] epoch 1: test") == len(classes)
    bad = script("peer.py", "--isa=avx3", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "unknown instruction set(s) avx3: give native and/or avx2" in bad.stderr


def test_time_to_accuracy_reports_checkpoints_start_up_and_floor(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "data" / "raw", n_train=256, n_test=64)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    out = tmp_path / "tta.json"
    proc = script("time_to_accuracy.py", "--model=digits_cnn_gpu", *TINY, "--set=ema_decay=0.9", "--set=epochs=2",
                  "--checks=2", f"--json={out}", cwd=tmp_path)  # fmt: skip
    text, r = proc.stdout, json.loads(out.read_text())
    assert "cpu (" in text and "CUDA graphs False" in text and "2 epochs × 8 steps of 32" in text
    assert "start-up (not in the times below): CUDA context" in text and "a test pass (not counted)" in text
    assert "ms/step at 790 TFLOP/s and 4.3 TB/s; moving the data" in text and "| epoch | step | seconds |" in text
    assert "seconds to 99.0%: " in text and "seconds to 99.5%: " in text
    assert [(c["epoch"], c["step"]) for c in r["checkpoints"]] == [(1, 4), (1, 8), (2, 4), (2, 8)]
    seconds = [c["seconds"] for c in r["checkpoints"]]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert all(0 <= c["test_accuracy"] <= 1 for c in r["checkpoints"])
    # width 4, head 8: forward FLOPs per image of the three convolutions and two dense layers; backward twice that,
    # less the first convolution's input gradient (the images need none)
    forward = 2 * (28 * 28 * 1 * 4 * 9 + 14 * 14 * 4 * 8 * 9 + 7 * 7 * 8 * 16 * 9 + 16 * 9 * 8 + 8 * 10)
    assert r["flops_per_step"] == 32 * (3 * forward - 2 * 28 * 28 * 4 * 9)
    assert r["bytes_per_step"] > 32 * 28 * 28 * 4 and r["floor_ms_per_step"] > 0 and r["floor_transfer_ms"] > 0
    assert {"seconds_to_99.0%", "floor_to_99.5%", "startup_context_s", "startup_prepare_s"} <= r.keys()


def test_gpu_script_runs_the_parts_named_and_epochs_asked_for(tmp_path: Path) -> None:
    """benchmarks/gpu.sh on a CPU (TINY): only the parts named run, each with a summary line; EPOCHS sets the
    default model's epochs in the tree under test."""
    make_idx_dataset(tmp_path / "raw", n_train=256, n_test=64)
    out = tmp_path / "out"
    env = clean_env(TINY="1", EPOCHS="1", RAW=str(tmp_path / "raw"), OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "tta", "tests"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    assert "train.epochs=1" in lines
    assert any(line.startswith("tta: exit 0 in ") for line in lines)
    assert any(line.startswith("tests: exit 0 in ") and "skipped: no CUDA" in line for line in lines)
    assert not [line for line in lines if line.startswith(("pipeline:", "ddp:", "top", "exp:"))]
    assert (out / "machine.txt").exists() and (out / "logs.tar.gz").exists()


def test_train_speed_benchmark_prints_each_variant_per_instruction_set(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    out = script("train_speed.py", "--rounds=1", "--images=256", "--variants=stage,glibc,contiguous", cwd=tmp_path)
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| variant |"))
    classes = ["CPU AVX-512,", "CPU AVX2 (imitated on AVX-512),"] if device.cpu_isa() == "AVX-512" else ["CPU "]
    assert all(c in header for c in classes) and header.count("images/s") == len(classes)
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ") and "---" not in line}
    assert {"stage", "glibc", "contiguous"} <= rows.keys()
    assert rows["stage"].count("| 1.00 |") == len(classes)
    summary = json.loads(lines[-1])["images_per_second"]
    assert len(summary) == 3 * len(classes) and all(rate > 0 for rate in summary.values())
    bad = script("train_speed.py", "--variants=fastest", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "unknown variant(s) fastest" in bad.stderr


def test_inference_modes_benchmark_times_each_way_and_checks_its_logits(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    out = script("inference_modes.py", "--rounds=1", "--images=300", "--passes=1", "--stage-images=1000", cwd=tmp_path)
    *table, line = out.stdout.strip().splitlines()
    r = json.loads(line)
    assert r["machine"].startswith("CPU ") and table[0].startswith(r["machine"]) and r["rounds"] == 1
    assert set(r["modes"]) == {"eager", "frozen", "plain", "int8"}
    for mode, m in r["modes"].items():
        assert f"| {mode} | " in "\n".join(table)
        assert m["first_seconds"] > 0 and m["images_per_second"] > 0
        if mode == "int8":  # quantization error: small against the logits, but not float rounding
            assert 1e-4 < m["max_rel_logit_diff"] < 0.3
        else:
            assert m["max_abs_logit_diff"] < 1e-3
        assert m["stage_seconds"] == pytest.approx(m["first_seconds"] + 1000 / m["images_per_second"], abs=0.06)
    bad = script("inference_modes.py", "--passes=0", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "must be at least 1" in bad.stderr


def test_app_load_benchmark_reports_throughput_latency_and_memory(tmp_path: Path) -> None:
    """A few seconds of load from 3 clients on a random-weight model: every request answered, figures printed."""
    p = params.load(REPO / "params.yaml").train
    network = models.from_params(p, mean=0.1307, std=0.3081)
    checkpoint = tmp_path / "model.pt"
    training.save_checkpoint(checkpoint, network, {"arch": p.arch, "model_kwargs": models.architecture_kwargs(p)})
    images = torch.zeros(30, 28, 28, dtype=torch.uint8)
    for i in range(30):  # a bar per digit, in different places: something for MNIST-style preparation to find
        images[i, 4:24, 6 + i % 14 : 9 + i % 14] = 255
    data.save_split(tmp_path / "test.pt", data.Split(images, torch.arange(30) % 10))
    out = tmp_path / "load.json"
    proc = script("app_load.py", f"--checkpoint={checkpoint}", f"--split={tmp_path / 'test.pt'}", "--images=30",
                  "--clients=3", "--seconds=3", f"--port={closed_port()}", f"--out={out}", cwd=tmp_path)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["requests"] > 10
    assert result["outcomes"].get("right", 0) + result["outcomes"].get("wrong", 0) == result["requests"]
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["requests_per_s"] > 0
    assert 100 < result["rss_mib_start"] <= result["rss_mib_peak"] and result["rss_mib_end"] <= result["rss_mib_peak"]
    assert "requests in" in proc.stdout and "cores" in result["machine"]
    assert not list(tmp_path.glob("app-load-*.log"))


def test_augment_benchmark_tables(tmp_path: Path) -> None:
    table = script("augment.py", "--repeats=1", "--batches=16", f"--data={tmp_path / 'none.pt'}", cwd=tmp_path).stdout
    assert "images: synthetic strokes" in table and "machine: CPU " in table
    assert "| transform | kornia | batch | own µs/batch | kornia µs/batch | kornia/own |" in table
    for name in (*augmentations.TRANSFORMS, "all of them", "train step"):
        assert f"| {name} |" in table


def test_zoo_table_takes_each_models_newest_finished_run_on_the_whole_training_split(tmp_path: Path) -> None:
    """benchmarks/zoo.py over a real sqlite MLflow store holding runs logged with the train stage's params: per zoo
    model the newest finished run on all 54,000 training images, described from its params; a small-data or
    unfinished run is not a result, and a model without a result is "not run"."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    client = MlflowClient(store_uri(tmp_path))
    experiment = client.create_experiment(tracking.EXPERIMENT)

    def log(model: str, when: int, accuracy: float, train_size: int = 54_000, status: str = "FINISHED") -> None:
        logged = tracking.flat_params(params.in_use(params.zoo_model(model, tmp_path / "params.yaml")))
        run_id = client.create_run(experiment, start_time=when).info.run_id
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, when, 0) for k, v in
                     {"test_accuracy": accuracy, "epochs_run": 3.0, "train_seconds": 12.34}.items()],
            params=[Param(k, str(v)) for k, v in
                    {**logged, "n_parameters": 1000 + when, "train_size": train_size}.items()],
            tags=[RunTag("machine", f"CPU class {when}")],
        )  # fmt: skip
        client.set_terminated(run_id, status)

    log("mlp_128_128", 1, 0.97)
    log("mlp_128_128", 3, 0.9765)  # the newest full-data run: the one listed
    log("mlp_128_128", 4, 0.5, train_size=200)  # a smoke run on a subset
    log("mlp_128_128", 5, 0.1, status="FAILED")
    log("mlp_bn_1024_512_256_128", 2, 0.98744)
    log("digits_cnn", 2, 0.9946)
    log("digits_cnn_fast", 2, 0.9898)
    log("digits_cnn_clean", 2, 0.9957, train_size=200)

    proc = script("zoo.py", f"--out={tmp_path / 'zoo.csv'}", cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": store_uri(tmp_path)})  # fmt: skip
    rows = {r["model"]: r for r in csv.DictReader((tmp_path / "zoo.csv").open())}
    assert list(rows) == list(yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["zoo"])
    listed = {m: (r["description"], r["parameters"], r["machine"], r["test_accuracy"]) for m, r in rows.items()
              if r["description"] != "not run"}  # fmt: skip
    assert listed == {
        "mlp_128_128": ("MLP 128-128; adam none; no aug; batch 512", "1003", "CPU class 3", "0.9765"),
        "mlp_bn_1024_512_256_128": ("MLP 1024-512-256-128 + BN; adamw onecycle; no aug; batch 128", "1002",
                                    "CPU class 2", "0.9874"),
        "digits_cnn": ("CNN 3×stage w16 + dense 128; adamw onecycle; aug + elastic + robustness aug; batch 128",
                       "1002", "CPU class 2", "0.9946"),
        "digits_cnn_fast": ("CNN 3×stage w8 (stride-2 first conv) + dense 128; adamw onecycle; no aug; batch 128",
                            "1002", "CPU class 2", "0.9898"),
    }  # fmt: skip
    assert rows["mlp_128_128"]["notebook_claim"] == "high 90s" and rows["digits_cnn_clean"]["test_accuracy"] == ""
    newest = "| `mlp_128_128` | MLP 128-128; adam none; no aug; batch 512 | 1003 | 3 | 12.3 | CPU class 3 | 97.65% |"
    assert newest in proc.stdout
    assert "| `digits_cnn_clean` | not run |" in proc.stdout
