"""Shared fixtures. Plain helper functions live in tests/helpers.py."""

from __future__ import annotations

import gzip
import http.server
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers import REPO, TEST_RUN_MARK, git_project, make_idx_bytes, make_idx_dataset, small_data, stop_processes

from digits import download


def pytest_configure(config: pytest.Config) -> None:
    """Mark this run in the environment that every process the tests start inherits (see ``test_run_processes``).

    Under pytest-xdist (`-n N`, what `scripts/dev.sh test` runs) each worker also takes its own share of the CPUs,
    and every process it starts inherits that affinity: two workers never oversubscribe the cores, and what a test
    compares runs with the same threads on the same cores.
    """
    os.environ.setdefault(TEST_RUN_MARK, f"{os.getpid()}-{time.time_ns()}")
    if worker := getattr(config, "workerinput", None):
        cpus = sorted(os.sched_getaffinity(0))
        index, count = int(worker["workerid"].removeprefix("gw")), int(worker["workercount"])
        share = cpus[index % len(cpus)::count] or cpus
        os.sched_setaffinity(0, share)
        torch.set_num_threads(len(share))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with `e2e` tests first, then those with `slow` ones, then the many short unit-test modules: xdist
    hands whole modules to its workers in this order, so the short ones fill the gaps at the end instead of one
    worker running a long module alone while the other waits."""
    rank = {}
    for item in items:
        own = 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2
        rank[item.module] = min(rank.get(item.module, 2), own)
    items.sort(key=lambda item: rank[item.module])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite leaves nothing running: a server, worker or queue that a test started and its teardown did not
    stop fails the run (and is killed, so it skews nothing that runs after). Checked once, by the process that
    runs the session (the xdist controller), after every test has ended."""
    if hasattr(session.config, "workerinput"):
        return
    if survivors := stop_processes():
        listed = "\n".join(f"  {pid}: {cmd[:300]}" for pid, cmd in survivors.items())
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"error: {len(survivors)} process(es) started by the tests outlived them (killed now):\n{listed}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def one_torch_thread():
    """Unit tests on tiny tensors run faster (and interfere less) on one thread; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class TinyIDX:
    """A tiny MNIST-like dataset on disk: ``directory`` holds the four plain IDX files."""

    directory: Path
    md5: dict[str, str]  # filename -> MD5 of the IDX bytes
    data: dict[str, bytes]  # filename -> IDX bytes


@pytest.fixture
def tiny_idx(tmp_path) -> TinyIDX:
    """Four valid IDX files (20 training, 10 test images) in a fresh directory."""
    directory = tmp_path / "tiny_idx"
    md5 = make_idx_dataset(directory, n_train=20, n_test=10, seed=0)
    return TinyIDX(directory, md5, make_idx_bytes(n_train=20, n_test=10, seed=0))


class IdxHTTPServer:
    """A real HTTP server on 127.0.0.1 serving ``/<mode>/<filename>.gz``; the mode picks the behaviour.

    Modes: ``good`` (the gzipped file), ``corrupt`` (gzipped, one byte of the IDX data changed),
    ``404``, ``500``, ``empty`` (a zero-length 200 reply),
    ``truncgz`` (the first half of the gzip stream, with a matching Content-Length),
    ``hang`` (reads the request, never answers), ``drip`` (headers, then one byte every 50 ms for up to
    ``drip_s`` seconds), ``garbage`` (a reply that is not HTTP).
    """

    drip_s = 5.0

    def __init__(self, payloads: dict[str, bytes]):
        self.gz = {name: gzip.compress(data) for name, data in payloads.items()}
        self.corrupt_gz = {name: gzip.compress(data[:-1] + bytes([data[-1] ^ 0xFF])) for name, data in payloads.items()}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[str] = []  # request paths, in arrival order
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/"

    def requests_for(self, mode: str) -> list[str]:
        """File names requested under ``/<mode>/``."""
        with self._lock:
            return [p.split("/", 2)[2] for p in self.requests if p.startswith(f"/{mode}/")]

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
                pass

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                parts = self.path.split("/")
                mode, name = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
                filename = name.removesuffix(".gz")
                known = name.endswith(".gz") and filename in server.gz
                if mode == "good" and known:
                    self._send(server.gz[filename])
                elif mode == "corrupt" and known:
                    self._send(server.corrupt_gz[filename])
                elif mode == "empty" and known:
                    self._send(b"")
                elif mode == "truncgz" and known:
                    self._send(server.gz[filename][: len(server.gz[filename]) // 2])
                elif mode == "500":
                    self.send_error(500, "Internal Server Error")
                elif mode == "hang":
                    server.stop.wait(30)
                elif mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 20))
                    self.end_headers()
                    start = time.monotonic()
                    try:
                        while not server.stop.is_set() and time.monotonic() - start < server.drip_s:
                            self.wfile.write(b"\x1f")
                            self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        pass
                elif mode == "garbage":
                    self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
                else:
                    self.send_error(404, "Not Found")
                self.close_connection = True

        return Handler


@pytest.fixture
def idx_http_server(tiny_idx):
    """A loopback HTTP server serving the ``tiny_idx`` files (see IdxHTTPServer); shut down afterwards."""
    server = IdxHTTPServer(tiny_idx.data)
    yield server
    server.close()


@pytest.fixture(scope="session")
def mnist_raw(tmp_path_factory) -> Path:
    """Real MNIST, obtained once per test run by the real download code (the repo's data/raw if already there),
    shared by the xdist workers: the first to need it fetches it under a lock, the others reuse it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's base directory, above each worker's own
    out = shared / "mnist-raw"
    with FileLock(str(shared / "mnist-raw.lock")):
        download.fetch_all(out, [download.LocalDirSource(REPO / "data" / "raw"), download.RegistryMirrorSource(30)])
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_raw) -> Path:
    """A git repository holding the current working tree (tracked + untracked, not ignored), small-data params,
    one commit; each test module gets its own."""
    return git_project(tmp_path_factory.mktemp("clone") / "digits", REPO,
                       small_data(mnist_raw, 3000, 1000, width=8, epochs=1, batch_size=128))
