"""Honest MLflow run records: real subprocesses that raise, get SIGTERM/SIGINT, or start runs all at once on a
fresh sqlite store. No run may be left RUNNING, and no process may fail on the store's creation race."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from helpers import clean_env, store_uri

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

# A stage-like script: stage.run(main), main starts a tracked run, prints its id, then does what argv[1] says.
SCRIPT = textwrap.dedent(
    """
    import sys, time
    import mlflow
    from digits import stage, tracking
    from digits.errors import UserError

    def main():
        with tracking.start_run("probe", tags={}) as run:
            mlflow.log_metric("x", 1.0)
            print("started", run.info.run_id, flush=True)
            if sys.argv[1] == "raise":
                raise RuntimeError("boom")
            if sys.argv[1] == "user-error":
                raise UserError("bad input")
            if sys.argv[1] == "wait":
                time.sleep(120)

    stage.run(main)
    """
)


def env_for(tmp: Path) -> dict[str, str]:
    return clean_env(MLFLOW_TRACKING_URI=store_uri(tmp), PYTHONPATH=str(REPO / "src"))


def start(tmp: Path, action: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, action], cwd=tmp, env=env_for(tmp), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def status(tmp: Path, run_id: str) -> str:
    return mlflow.MlflowClient(tracking_uri=store_uri(tmp)).get_run(run_id).info.status


def all_statuses(tmp: Path) -> list[str]:
    client = mlflow.MlflowClient(tracking_uri=store_uri(tmp))
    return [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]


@pytest.mark.parametrize(("action", "code", "state"), [("finish", 0, "FINISHED"), ("raise", 1, "FAILED"),
                                                        ("user-error", 2, "FAILED")])
def test_run_status_follows_how_the_stage_ended(tmp_path: Path, action: str, code: int, state: str):
    proc = start(tmp_path, action)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    run_id = out.split()[1]
    assert status(tmp_path, run_id) == state
    if action == "raise":
        assert "RuntimeError: boom" in err
    if action == "user-error":
        assert "error: bad input" in err.splitlines() and "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_run_as_killed(tmp_path: Path, signum: int):
    proc = start(tmp_path, "wait")
    line = proc.stdout.readline()
    assert line.startswith("started"), proc.stderr.read()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert status(tmp_path, line.split()[1]) == "KILLED"


def test_concurrent_processes_on_a_fresh_store_all_succeed(tmp_path: Path):
    """Six processes open a store that does not exist yet at the same moment (as queued experiments do)."""
    go = tmp_path / "go"
    script = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.005)\n" + SCRIPT
    procs = [subprocess.Popen([sys.executable, "-c", script, "finish"], cwd=tmp_path, env=env_for(tmp_path),
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    time.sleep(3)  # let every interpreter import mlflow and reach the barrier
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err and "already exists" not in err
    assert sorted(all_statuses(tmp_path)) == ["FINISHED"] * 6


def test_a_run_whose_process_died_is_marked_killed_by_the_next_run(tmp_path: Path):
    """SIGKILL cannot be handled: the next run on this host finds the dead process's run and ends it KILLED."""
    proc = start(tmp_path, "wait")
    line = proc.stdout.readline()
    assert line.startswith("started"), proc.stderr.read()
    proc.kill()
    proc.communicate(timeout=60)
    orphan = line.split()[1]
    assert status(tmp_path, orphan) == "RUNNING"
    nxt = start(tmp_path, "finish")
    out, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err
    assert status(tmp_path, orphan) == "KILLED" and status(tmp_path, out.split()[1]) == "FINISHED"


@pytest.mark.parametrize(("action", "code"), [("finish", 0), ("user-error", 2)])
def test_a_stage_ends_after_its_exit_handlers_and_with_its_output_flushed(tmp_path: Path, action: str, code: int):
    """stage.run ends the process without the interpreter's teardown (stage.end_process): exit handlers still run,
    buffered output still arrives, and the status is the stage's."""
    script = textwrap.dedent(
        """
        import atexit, sys
        from digits import stage
        from digits.errors import UserError

        atexit.register(lambda: print("exit handler ran"))

        def main():
            sys.stdout.write("buffered, never flushed by main")
            if sys.argv[1] == "user-error":
                raise UserError("bad input")

        stage.run(main)
        print("never reached")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, action], cwd=tmp_path, env=env_for(tmp_path), text=True,
                          capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "buffered, never flushed by mainexit handler ran\n"
    assert ("error: bad input" in proc.stderr) == (code == 2) and ("done in" in proc.stderr) == (code == 0)


def test_a_stage_runs_its_main_with_the_garbage_collector_started_less_often(tmp_path: Path):
    """stage.run raises the collector's thresholds (stage.collect_less_often) before main, and only there."""
    script = textwrap.dedent(
        """
        import gc
        from digits import stage

        print("before", gc.get_threshold())
        stage.run(lambda: print("in main", gc.get_threshold()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env_for(tmp_path), text=True,
                          capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    before, in_main = proc.stdout.splitlines()
    assert in_main == "in main (100000, 50, 100)" and before != "before (100000, 50, 100)"
