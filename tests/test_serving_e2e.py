"""End to end: a small real pipeline up to the register stage, then the registered champion through
mlflow.pyfunc, the real `mlflow models serve` on 127.0.0.1 (valid, malformed and fuzzed requests) and the
digits-predict CLI on image files; last, a second registration through `dvc exp run` and the promotion gate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, clean_env, closed_port, git_project, request, run, served, small_data, store_uri
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from digits import data, predict, registry, training

pytestmark = pytest.mark.e2e
NAME = "digits-mnist"


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_raw) -> Path:
    dest = git_project(tmp_path_factory.mktemp("serving") / "digits", REPO, small_data(mnist_raw, 5000, 1000, epochs=2))
    out = run(["dvc", "repro", "register"], dest).stdout
    assert "Running stage 'register'" in out and f"{NAME} v1" in out and "→ champion" in out
    return dest


@pytest.fixture(scope="module")
def client(project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=store_uri(project))


@pytest.fixture(scope="module")
def test_set(project) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images, labels, the evaluate stage's predicted class) for the project's test split."""
    split = data.load_split(project / "data" / "processed" / "test.pt")
    with open(project / "metrics" / "plots" / "confusion.csv") as f:
        predicted = np.array([int(r["predicted"]) for r in csv.DictReader(f)])
    return split.images.numpy(), split.labels.numpy(), predicted


def test_register_stage_tags_the_version_and_writes_the_decision(project, client):
    decision = json.loads((project / "models" / "registered.json").read_text())
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    run_info = json.loads((project / "models" / "run.json").read_text())
    assert decision == {
        "model_name": NAME, "version": 1, "alias": "champion",
        "test_accuracy": evaluation["test_accuracy"], "test_loss": evaluation["test_loss"],
        "previous_champion_version": None, "champion_test_accuracy": None, "champion_test_loss": None,
    }  # fmt: skip
    v = client.get_model_version_by_alias(NAME, "champion")
    assert int(v.version) == 1 and v.run_id == run_info["run_id"]
    assert float(v.tags["test_accuracy"]) == evaluation["test_accuracy"]
    assert float(v.tags["test_loss"]) == evaluation["test_loss"]
    assert v.tags["git_commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert v.tags["data_md5.t10k-labels-idx1-ubyte"] == "27ae3e4e09519cfbb04c329615203637"
    assert client.get_run(run_info["run_id"]).data.tags["registry_alias"] == "champion"
    assert client.get_run(run_info["run_id"]).data.tags["registered_model"] == f"{NAME}/1"
    assert json.loads(v.tags["promotion_decision"]) == decision


def test_the_registry_decision_is_no_dvc_metric(project):
    """Version, alias and previous champion depend on this machine's registry, not on the branch: DVC compares the
    metrics of train and evaluate only; the decision is a cached output, git-ignored like models/run.json."""
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)[""]["data"]
    assert set(shown) == {"metrics/train.json", "metrics/evaluate.json"}
    assert not {"version", "alias", "previous_champion_version"} & {k for m in shown.values() for k in m["data"]}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["register"]
    assert [out["path"] for out in lock["outs"]] == ["models/registered.json"]
    run(["git", "check-ignore", "-q", "models/registered.json"], project)


def test_register_again_for_the_same_checkpoint_registers_nothing(project, client):
    before = (project / "models" / "registered.json").read_text()
    out = run(["dvc", "repro", "--force", "--single-item", "register"], project).stdout
    assert f"already registered: {NAME} v1" in out
    assert (project / "models" / "registered.json").read_text() == before
    assert [int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == [1]


def test_champion_loads_through_pyfunc_and_matches_the_checkpoint_and_evaluate(project, test_set, monkeypatch):
    images, _, predicted = test_set
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(project))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = model.predict(images)
    network, _ = training.load_checkpoint(project / "models" / "model.pt")
    in_memory = training.predict_logits(network, torch.from_numpy(images).unsqueeze(1).float() / 255).argmax(1)
    np.testing.assert_array_equal(frame["class"].to_numpy(), in_memory.numpy())
    assert (frame["class"].to_numpy() == predicted).mean() >= 0.998  # evaluate runs a BatchNorm-folded copy
    np.testing.assert_allclose(frame[[f"prob_{d}" for d in range(10)]].sum(axis=1), 1, rtol=1e-5)


# ---------------------------------------------------------------- the real scoring server


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    """`mlflow models serve` (the README's command) on a free loopback port; its process group is killed after."""
    port = closed_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = clean_env(MLFLOW_TRACKING_URI=store_uri(project))  # no PYTHONPATH: the model brings its own code
    cmd = ["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]  # fmt: skip
    with served(cmd, project, env, f"http://127.0.0.1:{port}/ping", log):
        yield f"http://127.0.0.1:{port}"


def invoke(server: str, payload, timeout: float = 120):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(f"{server}/invocations", body, timeout=timeout)


def test_server_predicts_like_the_evaluate_stage(server, test_set):
    images, labels, predicted = test_set
    status, body = invoke(server, {"inputs": images.tolist()})
    assert status == 200, body
    rows = json.loads(body)["predictions"]
    classes = np.array([r["class"] for r in rows])
    assert len(rows) == len(images) and set(rows[0]) == {"class", *(f"prob_{d}" for d in range(10))}
    assert (classes == predicted).mean() >= 0.998
    assert abs((classes == labels).mean() - (predicted == labels).mean()) <= 0.002
    status, body = invoke(server, {"inputs": (images[:8] / 255).reshape(8, 784).tolist()})  # floats, flat
    assert status == 200 and [r["class"] for r in json.loads(body)["predictions"]] == classes[:8].tolist()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": np.zeros((2, 28, 27)).tolist()}, "images must be shaped [N, 28, 28], [N, 1, 28, 28] or [N, 784]"),
        ({"inputs": [[["a"] * 28] * 28]}, "must be numeric"),
        (b'{"inputs": [[' + b",".join([b"NaN"] * 784) + b"]]}", "image 0 contains NaN"),
        (b'{"inputs": [[' + b",".join([b"1"] * 783 + [b"-Infinity"]) + b"]]}", "image 0 contains NaN or infinite"),
        ({"inputs": [[300] * 784]}, "outside 0-255"),
        ({"inputs": []}, "empty batch"),
        ({"inputs": [[1, 2], [3]]}, "inhomogeneous"),
        (b"this is not JSON", "valid JSON"),
        (b"", "valid JSON"),
        ({"images": [[0] * 784]}, "exactly one of the input fields"),
        ({"inputs": np.zeros((1, 1000, 1000), np.uint8).tolist()}, "got [1, 1000, 1000]"),
        ({"inputs": np.zeros((4097, 784), np.uint8).tolist()}, "exceeds the limit of 4096"),
    ],
    ids=[
        "shape",
        "strings",
        "nan",
        "inf",
        "range",
        "empty",
        "ragged",
        "not-json",
        "no-body",
        "wrong-key",
        "huge-image",
        "huge-batch",
    ],  # fmt: skip
)
def test_malformed_requests_get_400_with_a_clear_message_and_the_server_keeps_serving(server, body, message):
    status, text = invoke(server, body)
    assert status == 400, text
    assert message in json.loads(text)["message"]
    assert request(f"{server}/ping")[0] == 200


def test_wrong_content_type_is_415(server):
    status, text = request(f"{server}/invocations", b"\x89PNG", content_type="image/png")
    assert status == 415 and "content types" in text


SERVER_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def fuzz_body(arr: np.ndarray) -> bytes:
    return json.dumps({"inputs": arr.tolist()}).encode()  # NaN/Infinity: JSON extensions both sides accept


@SERVER_FUZZ
@given(
    st.one_of(
        hnp.arrays(np.float64, st.sampled_from([(1, 28, 28), (2, 784), (1, 1, 28, 28), (3,), (2, 27, 28), (0, 784)]),
                   elements=st.floats(allow_nan=True, allow_infinity=True)).map(fuzz_body),
        hnp.arrays(np.int64, st.sampled_from([(1, 28, 28), (2, 784), (1, 28)]),
                   elements=st.integers(-2**40, 2**40)).map(fuzz_body),
        st.binary(max_size=300),
        st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3)),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=2), max_leaves=20)
        .map(lambda v: json.dumps({"inputs": v}).encode()),
    )
)  # fmt: skip
def test_fuzzed_requests_get_200_or_400_never_a_crash_or_hang(server, body):
    status, text = invoke(server, body, timeout=60)
    assert status in (200, 400), (status, text[:500])
    if status == 400:
        assert json.loads(text)["message"]
    else:
        rows = json.loads(text)["predictions"]
        assert rows and all(0 <= r["class"] <= 9 for r in rows)


def test_server_still_answers_after_everything(server, test_set):
    assert request(f"{server}/ping")[0] == 200
    status, body = invoke(server, {"inputs": test_set[0][:2].tolist()})
    assert status == 200 and len(json.loads(body)["predictions"]) == 2


# ---------------------------------------------------------------- the predict CLI


def variants(image: np.ndarray, k: int) -> list[tuple[str, Image.Image]]:
    """An MNIST digit as a file the way a person might make one: scaled, placed on a larger canvas, coloured,
    either polarity."""
    scale = (1, 3, 8, 15)[k % 4]
    dark_on_light = k % 2 == 0
    ink = 255 - image if dark_on_light else image
    colour = [(0, 0, 0), (200, 30, 30), (20, 60, 220), (0, 120, 0)][k % 4]
    rgb = np.stack([ink] * 3, -1).astype(np.float32) / 255
    if dark_on_light:  # coloured ink on white paper
        rgb = 1 - (1 - rgb) * (1 - np.array(colour) / 255)
    digit = Image.fromarray((rgb * 255).astype(np.uint8)).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (28 * scale + 13 * k % 40, 28 * scale + 7 * k % 30), digit.getpixel((0, 0)))
    canvas.paste(digit, (13 * k % 40, 0))
    fmt = "JPEG" if k % 5 == 4 else "PNG"
    return [(fmt, canvas if k % 3 else canvas.convert("L"))]


def predict_cli(project: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = clean_env(MLFLOW_TRACKING_URI=store_uri(project), PYTHONPATH=str(project / "src"))
    cmd = [sys.executable, "-m", "digits.predict", *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def image_files(test_set, tmp_path_factory) -> tuple[list[str], np.ndarray, np.ndarray]:
    images, labels, predicted = test_set
    out = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, image in enumerate(images[:300]):
        [(fmt, img)] = variants(image, i)
        path = out / f"{i:03d}_{labels[i]}.{fmt.lower()}"
        img.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        paths.append(str(path))
    return paths, labels[:300], predicted[:300]


@pytest.mark.parametrize("source", ["champion", "checkpoint"])
def test_cli_accuracy_on_image_files_matches_the_evaluate_stage(project, image_files, source):
    paths, labels, predicted = image_files
    args = ["--checkpoint", "models/model.pt"] if source == "checkpoint" else []
    proc = predict_cli(project, [*args, "--json", *paths])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == paths
    classes = np.array([r["class"] for r in results])
    assert all(0 < r["confidence"] <= 1 and abs(sum(r["probabilities"]) - 1) < 1e-4 for r in results)
    cli_accuracy, stage_accuracy = (classes == labels).mean(), (predicted == labels).mean()
    assert abs(cli_accuracy - stage_accuracy) <= 0.03, (cli_accuracy, stage_accuracy)
    assert (classes == predicted).mean() >= 0.93


def test_cli_bad_files_get_their_own_errors_and_the_others_are_classified(project, image_files, tmp_path):
    good = image_files[0][:2]
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (200, 300), "white").save(tmp_path / "blank.png")
    Image.new("L", (1, 1), 0).save(tmp_path / "dot.png")
    bad = [str(tmp_path / n) for n in ("notes.png", "empty.jpg", "blank.png", "dot.png", "missing.png")]
    proc = predict_cli(project, [good[0], *bad, good[1]])
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == good and all("confidence" in line for line in lines)
    for name, why in zip(bad, ["not a PNG/JPEG", "empty file", "no digit found", "no digit found", "cannot read"],
                         strict=True):  # fmt: skip
        assert f"error: {name}: {why}" in proc.stderr

    as_json = json.loads(predict_cli(project, ["--json", good[0], bad[0]]).stdout)
    assert "class" in as_json[0] and "error" in as_json[1] and "class" not in as_json[1]


def test_cli_unknown_model_is_one_error_line(project, image_files):
    proc = predict_cli(project, ["--model", "models:/no-such-model@champion", image_files[0][0]])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: cannot load model")
    proc = predict_cli(project, ["--checkpoint", "models/nope.pt", image_files[0][0]])
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.binary(max_size=400) | st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]), min_size=1, max_size=4
    )
)
def test_cli_fuzzed_files_each_get_an_error_never_a_crash(project, image_files, tmp_path_factory, capsys, blobs):
    """The CLI's main() in this process (a subprocess per example would take minutes): fuzzed files between two
    real digits; each gets its own result, the digits are still classified, the status says something failed."""
    d = tmp_path_factory.mktemp("fuzz")
    paths = [image_files[0][0]]
    for i, blob in enumerate(blobs):
        (d / f"{i}.png").write_bytes(blob)
        paths.append(str(d / f"{i}.png"))
    paths.append(image_files[0][1])
    capsys.readouterr()
    status = predict.main(["--checkpoint", str(project / "models" / "model.pt"), "--json", *paths])
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == paths
    assert "class" in results[0] and "class" in results[-1]
    assert all(("error" in r) != ("class" in r) for r in results)
    assert status == (1 if any("error" in r for r in results) else 0)


# ---------------------------------------------------------------- the gate, end to end (runs last: changes the store)


def test_second_registration_through_dvc_exp_run_applies_the_gate(project, client):
    first = client.get_model_version(NAME, "1")
    run(["dvc", "exp", "run", "-S", "train.lr=0.0005"], project)
    decision = json.loads((project / "models" / "registered.json").read_text())
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    new, old = registry.Score(evaluation["test_accuracy"], evaluation["test_loss"]), registry.version_score(first)
    expected = "champion" if registry.promotes(new, old) else "challenger"
    assert decision["version"] == 2 and decision["alias"] == expected
    assert decision["previous_champion_version"] == 1
    assert (decision["champion_test_accuracy"], decision["champion_test_loss"]) == (old.accuracy, old.loss)
    aliases = {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    assert aliases["champion"] == (2 if expected == "champion" else 1)
    assert client.get_model_version(NAME, "2").tags["dvc_exp_name"]
