"""The team tracking server: `scripts/team-server.sh` (PostgreSQL + `mlflow server` serving artifacts, real
processes on free loopback ports) takes the pipeline's runs, metrics and models; an unreachable server fails fast."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import BIN, REPO, run, store_uri

from digits import tracking
from digits.errors import UserError

PG_BINARIES = glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_require_server_fails_in_seconds_naming_the_uri_when_nothing_listens():
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(UserError, match=f"{uri} is unreachable"):
        tracking.require_server(uri)
    assert time.monotonic() - start < 5


def test_require_server_times_out_on_a_server_that_never_answers():
    with socket.socket() as s:  # accepts connections (kernel backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen()
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(UserError, match="unreachable.*timed out"):
            tracking.require_server(uri, timeout_s=1)
        assert time.monotonic() - start < 5


def test_local_stores_need_no_server(tmp_path: Path):
    tracking.require_server(store_uri(tmp_path))  # no exception, no network


def test_train_stage_exits_with_one_line_naming_the_unreachable_uri(tmp_path: Path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = run([sys.executable, "src/train.py", "data/processed", *(str(tmp_path / d) for d in "abc")], REPO,
               check=False, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO / "src"))  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: MLflow tracking server {uri} is unreachable")
    assert time.monotonic() - start < 60  # seconds (interpreter start-up included), not MLflow's minutes of retries
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """`bash scripts/team-server.sh` on free loopback ports; stopped (PostgreSQL too) and removed afterwards."""
    if not PG_BINARIES:
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql; .ci/run does)")
    team_dir = tmp_path_factory.mktemp("team")
    pgdata = Path(tempfile.mkdtemp(prefix="digits-pg-"))  # outside pytest's private tmp: the postgres user needs it
    pgdata.chmod(0o755)
    port = free_port()
    env = os.environ | {"PORT": str(port), "PGPORT": str(free_port()), "TEAM_DIR": str(team_dir),
                        "TEAM_PGDATA": str(pgdata / "cluster"), "MLFLOW": str(BIN / "mlflow")}  # fmt: skip
    log = (team_dir / "server.log").open("w")
    proc = subprocess.Popen(["bash", "scripts/team-server.sh"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"team server did not come up:\n{(team_dir / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        yield uri, team_dir
    finally:
        proc.send_signal(signal.SIGTERM)  # the script stops mlflow and PostgreSQL
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(pgdata, ignore_errors=True)


def new_runs(uri: str, before: set[str]) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("digits")
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id not in before] if exp else []


@pytest.mark.e2e
def test_pipeline_logs_runs_metrics_and_models_to_the_team_server(team_server, project: Path):  # noqa: F811
    uri, team_dir = team_server
    run(["dvc", "repro"], project, MLFLOW_TRACKING_URI=uri)
    [r] = new_runs(uri, set())
    assert r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics and "val_accuracy" in r.data.metrics
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # artifacts go through the server ...
    assert list((team_dir / "artifacts").rglob("MLmodel"))  # ... which stores them in its destination
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = {m.name: m for m in client.search_logged_models(experiment_ids=[r.info.experiment_id])}
    assert set(logged) == {"model", "pyfunc_model"}  # train's PyTorch model, register's serving model
    assert {m.source_run_id for m in logged.values()} == {r.info.run_id}

    # the register stage registered the serving model in the server's registry and made it the champion
    mlflow.set_tracking_uri(uri)
    [name] = [m.name for m in client.search_registered_models() if "champion" in m.aliases]
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    answer = model.predict(np.zeros((2, 28, 28), np.uint8))
    assert len(answer) == 2 and {"class", *(f"prob_{d}" for d in range(10))} <= set(answer.columns)

    # two training runs at once (e.g. two team members) both land
    before = {r.info.run_id}
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "src/train.py", "data/processed"]
    procs = [subprocess.Popen([*cmd, *(f"concurrent{i}/{d}" for d in "abc")], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    both = new_runs(uri, before)
    assert len(both) == 2 and {r.info.status for r in both} == {"FINISHED"}
    assert all("best_val_accuracy" in r.data.metrics for r in both)
