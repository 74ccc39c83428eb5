"""Plain test helpers (no pytest fixtures here): tiny MNIST-like IDX data, loopback-network odds and ends, and
the commands end-to-end tests run in a temporary project."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from digits import idx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment running the tests: its dvc, mlflow, python

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def make_idx_arrays(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 28×28 images and 0–9 labels, keyed by the MNIST IDX file names."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def make_idx_bytes(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, bytes]:
    """The four tiny IDX files as bytes (uncompressed)."""
    return {name: idx.encode(arr) for name, arr in make_idx_arrays(n_train, n_test, seed).items()}


def make_idx_dataset(
    directory: str | Path, n_train: int = 20, n_test: int = 10, seed: int = 0, gz: bool = False
) -> dict[str, str]:
    """Write a tiny valid MNIST-like IDX dataset into ``directory``; return {filename: md5 of the IDX bytes}.

    With ``gz=True`` the files are written as ``<name>.gz`` (the MD5s are still those of the plain bytes).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, data in make_idx_bytes(n_train, n_test, seed).items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    return md5


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None, content_type: str = "application/json", timeout: float = 60):
    """(status, body text) of a GET (body None) or POST; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def served(cmd: list[str], cwd: Path, env: dict[str, str], ready_url: str, log: Path,
           timeout_s: float = 240) -> Iterator[subprocess.Popen]:
    """Run a server in its own process group until ``ready_url`` answers 200 (failing the test, with the log's
    tail, if it exits or times out first); SIGTERM, then SIGKILL, its whole group on leaving."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s  # a cold start on a busy 2-core machine takes up to a minute
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if request(ready_url, timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{ready_url} not answering after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


# root in a container needs --no-sandbox; the rest keeps Chromium off the network (Playwright gives it a fresh profile)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """The system Chromium's path; skips the test, saying why, where none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH: install Debian's `chromium` (.ci/run does) to run the browser test")


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900, **extra_env: str
) -> subprocess.CompletedProcess:
    """Run a command of the test environment in ``cwd`` without the caller's DVC_/MLFLOW_ variables (plus
    ``extra_env``); fail the test, showing its output, when it exits non-zero (unless ``check=False``)."""
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def git_commit(repo: Path, message: str) -> str:
    """Commit everything in ``repo`` (as a throwaway identity); return the new commit's hash."""
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def store_uri(project: Path) -> str:
    """The tracking URI of a project's embedded MLflow store."""
    return f"sqlite:///{project / 'mlflow.db'}"


def mlflow_runs(project: Path) -> list:
    """The runs of the project's ``digits`` experiment in its own ``mlflow.db``, oldest first."""
    client = mlflow.MlflowClient(tracking_uri=store_uri(project))
    exp = client.get_experiment_by_name("digits")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
def git_project(dest: Path, repo: Path, change_params: Callable[[dict], None]) -> Path:
    """A git repository (branch ``main``, one commit) at ``dest`` holding ``repo``'s working tree (tracked +
    untracked, not ignored) without dvc.lock and the rendered report, with ``change_params`` applied to its
    params.yaml: the real pipeline, ready for ``dvc``, as a new checkout would start."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        if (repo / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, dest / rel)
    for stale in ("dvc.lock", "reports/report.md", "reports/report.html"):
        (dest / stale).unlink(missing_ok=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    change_params(params)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    git_commit(dest, "test project")
    return dest


def small_data(
    raw: Path, train_limit: int, test_limit: int, compile_inference: bool = False, **train: object
) -> Callable[[dict], None]:
    """A ``change_params`` for ``git_project``: the download stage takes the MNIST files from ``raw`` (the
    ``mnist_raw`` fixture), ``train_limit``/``test_limit`` images, 20 font digits of each class per part (render),
    ``train`` params overridden.

    ``evaluate.compile`` is off unless ``compile_inference``: compiling costs every evaluate run ~11 s of g++ on
    2 cores, and tests of queues, servers and resumption do not test it. tests/test_pipeline_e2e.py runs the
    pipeline with it on, as the default params.yaml has it.
    """

    def change(params: dict) -> None:
        params["download"].update(local_dir=str(raw), mirrors=[], registry_mirror=False)
        params["preprocess"].update(train_limit=train_limit, test_limit=test_limit)
        params["render"].update(per_class=20)
        params["evaluate"].update(compile=compile_inference)
        params["train"].update(train)

    return change


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without DVC_*/MLFLOW_* variables, the venv's bin first on PATH (for ``dvc``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


# whether the train stage's launcher (scripts/tcmalloc.sh) preloads tcmalloc here
TCMALLOC = "tcmalloc" in subprocess.run(["bash", str(REPO / "scripts" / "tcmalloc.sh"), "printenv", "LD_PRELOAD"],
                                        capture_output=True, text=True).stdout

TEST_RUN_MARK = "DIGITS_TEST_RUN"  # set by conftest.py for the whole session; every process the tests start inherits it


def test_run_processes() -> dict[int, str]:
    """pid -> command line of every live process that this test run started (it carries ``TEST_RUN_MARK`` with
    this run's value in its environment), however it was detached: daemons and queue workers included."""
    mark = f"{TEST_RUN_MARK}={os.environ[TEST_RUN_MARK]}".encode()
    found = {}
    if not Path("/proc").is_dir():  # not Linux: nothing to check
        return found
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def stop_processes(where: Callable[[str], bool] = lambda cmdline: True, grace_s: float = 15) -> dict[int, str]:
    """Wait up to ``grace_s`` for this run's processes whose command line passes ``where`` to end, then SIGKILL
    what is left; return those that had to be killed."""
    deadline = time.monotonic() + grace_s
    while (left := {pid: cmd for pid, cmd in test_run_processes().items() if where(cmd)}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
