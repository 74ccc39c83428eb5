"""digits.download against a real loopback HTTP server, real local directories and real pickles."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import IDX_FILES, closed_port, make_idx_dataset

from digits import download, files, idx
from digits.download import DownloadError, LocalDirSource, MirrorSource, SourceError, fetch_all
from digits.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _assert_verified(dest: Path, md5: dict[str, str]) -> None:
    assert sorted(p.name for p in dest.iterdir()) == sorted(md5)  # nothing else: no temp files
    for name, want in md5.items():
        assert files.md5_file(dest / name) == want


def _parse_error(msg: str) -> dict[str, list[str]]:
    """DownloadError text -> {file: [reason, ...]} (files indented by 2 spaces, reasons by 4)."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in msg.splitlines()[1:]:
        if line.startswith("    "):
            out[current].append(line[4:])
        else:
            assert line.startswith("  ") and line.endswith(":"), line
            current = line[2:-1]
            out[current] = []
    return out


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# ---------------------------------------------------------------- mirrors


def test_good_mirror_writes_all_files_verified(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    log: list[str] = []
    result = fetch_all(dest, [MirrorSource(idx_http_server.url("good"), 2)], tiny_idx.md5, log=log.append)
    assert result == tiny_idx.md5
    _assert_verified(dest, tiny_idx.md5)
    for name in IDX_FILES:
        assert (dest / name).read_bytes() == tiny_idx.data[name]
    assert sorted(idx_http_server.requests_for("good")) == sorted(f"{n}.gz" for n in IDX_FILES)
    assert len(log) == 4 and all("MD5 verified" in line for line in log)


def test_mirror_url_without_trailing_slash(tmp_path, tiny_idx, idx_http_server):
    base = idx_http_server.url("good").rstrip("/")
    fetch_all(tmp_path / "raw", [MirrorSource(base, 2)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(tmp_path / "raw", tiny_idx.md5)


def test_corrupted_first_mirror_falls_back_to_second(tmp_path, tiny_idx, idx_http_server):
    """The corrupt mirror serves valid gzip of wrong bytes: only the MD5 check can catch it."""
    dest = tmp_path / "raw"
    log: list[str] = []
    corrupt = MirrorSource(idx_http_server.url("corrupt"), 2)
    good = MirrorSource(idx_http_server.url("good"), 2)
    fetch_all(dest, [corrupt, good], tiny_idx.md5, log=log.append)
    _assert_verified(dest, tiny_idx.md5)
    # MD5 mismatch is not "unreachable": the corrupt mirror is asked for every file
    assert len(idx_http_server.requests_for("corrupt")) == 4
    assert len(idx_http_server.requests_for("good")) == 4
    assert all(good.name in line for line in log)


@pytest.mark.parametrize("mode", ["404", "500", "truncgz"])
def test_http_errors_and_bad_gzip_fall_back_without_marking_source_down(tmp_path, tiny_idx, idx_http_server, mode):
    dest = tmp_path / "raw"
    bad = MirrorSource(idx_http_server.url(mode), 2)
    fetch_all(dest, [bad, MirrorSource(idx_http_server.url("good"), 2)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)
    assert len(idx_http_server.requests_for(mode)) == 4  # a per-file error: still asked for every file


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("404", "HTTP 404"), ("500", "HTTP 500"), ("truncgz", "not a valid gzip file"), ("corrupt", "MD5 mismatch")],
)
def test_single_failing_mirror_reason(tmp_path, tiny_idx, idx_http_server, mode, reason):
    dest = tmp_path / "raw"
    dest.mkdir()
    with pytest.raises(DownloadError) as info:
        fetch_all(dest, [MirrorSource(idx_http_server.url(mode), 2)], tiny_idx.md5, log=lambda _: None)
    msg = str(info.value)
    for name in IDX_FILES:
        assert name in msg
    assert msg.count(reason) == 4
    assert _listing(dest) == []


def test_unreachable_source_is_skipped_for_remaining_files(tmp_path, tiny_idx, idx_http_server):
    """A refused connection marks the source down; later files record it as skipped."""
    dest = tmp_path / "raw"
    dead = MirrorSource(f"http://127.0.0.1:{closed_port()}/mnist/", 2)
    with pytest.raises(DownloadError) as info:
        fetch_all(dest, [dead, MirrorSource(idx_http_server.url("404"), 2)], tiny_idx.md5, log=lambda _: None)
    failures = _parse_error(str(info.value))
    assert list(failures) == list(IDX_FILES)
    first, *rest = failures.values()
    assert first[0].startswith(f"{dead.name}: ") and "skipped" not in first[0]
    assert "refused" in first[0].lower()
    for reasons in rest:
        assert reasons[0].startswith(f"{dead.name}: skipped, unreachable earlier (")
        assert "refused" in reasons[0].lower()  # the original reason is repeated
    for reasons in failures.values():
        assert len(reasons) == 2 and "HTTP 404" in reasons[1]  # the next source is still tried
    assert len(idx_http_server.requests_for("404")) == 4
    assert _listing(dest) == []


def test_unreachable_first_source_then_good_mirror(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    dead = MirrorSource(f"http://127.0.0.1:{closed_port()}/", 2)
    fetch_all(dest, [dead, MirrorSource(idx_http_server.url("good"), 2)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)


def test_hanging_mirror_times_out_and_is_skipped(tmp_path, tiny_idx, idx_http_server):
    """A server that accepts but never answers costs one timeout in total, not one per file."""
    dest = tmp_path / "raw"
    hang = MirrorSource(idx_http_server.url("hang"), 0.5)
    start = time.monotonic()
    fetch_all(dest, [hang, MirrorSource(idx_http_server.url("good"), 2)], tiny_idx.md5, log=lambda _: None)
    elapsed = time.monotonic() - start
    _assert_verified(dest, tiny_idx.md5)
    assert len(idx_http_server.requests_for("hang")) == 1
    assert elapsed < 3, f"took {elapsed:.1f} s"


def test_hanging_only_mirror_fails_in_bounded_time(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    hang = MirrorSource(idx_http_server.url("hang"), 0.5)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_all(dest, [hang], tiny_idx.md5, log=lambda _: None)
    elapsed = time.monotonic() - start
    assert elapsed < 3, f"took {elapsed:.1f} s"
    msg = str(info.value)
    assert "timed out" in msg
    assert msg.count("skipped, unreachable earlier") == 3
    assert _listing(dest) == []


def test_slow_drip_mirror_is_abandoned_at_ten_times_timeout(tmp_path, tiny_idx, idx_http_server):
    """timeout_s=0.1 promises at most 1 s per file; the server drips one byte per 50 ms for 3 s."""
    dest = tmp_path / "raw"
    idx_http_server.drip_s = 3.0
    drip = MirrorSource(idx_http_server.url("drip"), 0.1)
    start = time.monotonic()
    with pytest.raises(SourceError, match="too slow") as info:
        drip.fetch(IDX_FILES[0])
    elapsed = time.monotonic() - start
    assert info.value.unreachable
    assert elapsed < 1 + 1.2, f"took {elapsed:.1f} s for a 1 s deadline"
    assert _listing(dest) == []


def test_non_http_reply_falls_back_to_next_source(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    garbage = MirrorSource(idx_http_server.url("garbage"), 2)
    fetch_all(dest, [garbage, MirrorSource(idx_http_server.url("good"), 2)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)


def test_mirror_without_scheme_is_a_source_failure(tmp_path, tiny_idx):
    dest = tmp_path / "raw"
    sources = [MirrorSource("mirror.invalid/mnist/", 2), LocalDirSource(tiny_idx.directory)]
    fetch_all(dest, sources, tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)


# ---------------------------------------------------------------- all sources failing


def test_all_sources_failing_names_every_file_and_source(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    dest.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    sources = [
        LocalDirSource(empty),
        MirrorSource(idx_http_server.url("404"), 2),
        MirrorSource(idx_http_server.url("corrupt"), 2),
        MirrorSource(f"http://127.0.0.1:{closed_port()}/", 2),
    ]
    with pytest.raises(DownloadError) as info:
        fetch_all(dest, sources, tiny_idx.md5, log=lambda _: None)
    err = info.value
    assert isinstance(err, UserError)
    msg = str(err)
    assert msg.startswith("could not obtain verified MNIST files from any source")
    failures = _parse_error(msg)
    assert list(failures) == list(IDX_FILES)
    for name, reasons in failures.items():
        assert len(reasons) == len(sources)
        for source, reason in zip(sources, reasons, strict=True):
            assert reason.startswith(f"{source.name}: ")
        assert f"neither {name} nor {name}.gz" in reasons[0]
        assert "HTTP 404" in reasons[1]
        assert "MD5 mismatch" in reasons[2] and tiny_idx.md5[name] in reasons[2]
        assert "refused" in reasons[3].lower() or "skipped, unreachable earlier" in reasons[3]
    assert "skipped" not in failures[IDX_FILES[0]][3]
    assert all("skipped, unreachable earlier" in failures[name][3] for name in IDX_FILES[1:])
    assert _listing(dest) == []


def test_no_sources_configured(tmp_path, tiny_idx):
    with pytest.raises(DownloadError, match="no sources configured"):
        fetch_all(tmp_path / "raw", [], tiny_idx.md5, log=lambda _: None)
    assert _listing(tmp_path / "raw") == []


def test_partial_success_keeps_verified_files_and_leaves_no_temp_files(tmp_path, tiny_idx):
    """Two files available locally, two nowhere: the two are written, the error names only the others."""
    partial = tmp_path / "partial"
    partial.mkdir()
    have = IDX_FILES[:2]
    for name in have:
        (partial / name).write_bytes(tiny_idx.data[name])
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        fetch_all(dest, [LocalDirSource(partial)], tiny_idx.md5, log=lambda _: None)
    assert _listing(dest) == sorted(have)
    assert list(_parse_error(str(info.value))) == list(IDX_FILES[2:])


# ---------------------------------------------------------------- files already present


def test_present_verified_files_are_kept_without_contacting_sources(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    make_idx_dataset(dest, n_train=20, n_test=10, seed=0)
    mtimes = {name: os.stat(dest / name).st_mtime_ns for name in IDX_FILES}
    log: list[str] = []
    sources = [MirrorSource(idx_http_server.url("500"), 2), MirrorSource(f"http://127.0.0.1:{closed_port()}/", 2)]
    assert fetch_all(dest, sources, tiny_idx.md5, log=log.append) == tiny_idx.md5
    assert idx_http_server.requests == []
    assert {name: os.stat(dest / name).st_mtime_ns for name in IDX_FILES} == mtimes
    assert log == [f"{name}: already present and verified" for name in IDX_FILES]


def test_present_corrupted_file_is_replaced(tmp_path, tiny_idx, idx_http_server):
    dest = tmp_path / "raw"
    make_idx_dataset(dest, n_train=20, n_test=10, seed=0)
    bad = IDX_FILES[2]
    (dest / bad).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")  # valid IDX, wrong content
    fetch_all(dest, [MirrorSource(idx_http_server.url("good"), 2)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)
    assert idx_http_server.requests_for("good") == [f"{bad}.gz"]


def test_present_corrupted_file_is_kept_when_no_source_delivers(tmp_path, tiny_idx, idx_http_server):
    """A failed replacement must not delete or truncate what was there."""
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / IDX_FILES[0]).write_bytes(b"stale")
    with pytest.raises(DownloadError):
        fetch_all(dest, [MirrorSource(idx_http_server.url("truncgz"), 2)], tiny_idx.md5, log=lambda _: None)
    assert _listing(dest) == [IDX_FILES[0]]
    assert (dest / IDX_FILES[0]).read_bytes() == b"stale"


# ---------------------------------------------------------------- local directory


def test_local_dir_plain_files(tmp_path, tiny_idx):
    dest = tmp_path / "raw"
    log: list[str] = []
    fetch_all(dest, [LocalDirSource(tiny_idx.directory)], tiny_idx.md5, log=log.append)
    _assert_verified(dest, tiny_idx.md5)
    assert all(f"local directory {tiny_idx.directory}" in line for line in log)


def test_local_dir_gz_files(tmp_path, tiny_idx):
    gz_dir = tmp_path / "gz"
    assert make_idx_dataset(gz_dir, n_train=20, n_test=10, seed=0, gz=True) == tiny_idx.md5
    assert _listing(gz_dir) == sorted(f"{n}.gz" for n in IDX_FILES)
    dest = tmp_path / "raw"
    fetch_all(dest, [LocalDirSource(gz_dir)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)


def test_local_dir_mixed_plain_and_gz(tmp_path, tiny_idx):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, name in enumerate(IDX_FILES):
        data = tiny_idx.data[name]
        if i % 2:
            (mixed / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (mixed / name).write_bytes(data)
    fetch_all(tmp_path / "raw", [LocalDirSource(mixed)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(tmp_path / "raw", tiny_idx.md5)


def test_local_dir_errors(tmp_path, tiny_idx):
    d = tmp_path / "local"
    d.mkdir()
    src = LocalDirSource(d)
    with pytest.raises(SourceError, match="neither .* nor .*gz") as info:
        src.fetch(IDX_FILES[0])
    assert not info.value.unreachable
    (d / f"{IDX_FILES[0]}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="not a valid gzip file"):
        src.fetch(IDX_FILES[0])
    (d / f"{IDX_FILES[1]}.gz").write_bytes(gzip.compress(tiny_idx.data[IDX_FILES[1]])[:-10])
    with pytest.raises(SourceError, match="not a valid gzip file"):
        src.fetch(IDX_FILES[1])


def test_local_dir_falls_back_to_mirror_for_missing_files(tmp_path, tiny_idx, idx_http_server):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / IDX_FILES[0]).write_bytes(tiny_idx.data[IDX_FILES[0]])
    dest = tmp_path / "raw"
    sources = [LocalDirSource(partial), MirrorSource(idx_http_server.url("good"), 2)]
    fetch_all(dest, sources, tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)
    assert sorted(idx_http_server.requests_for("good")) == sorted(f"{n}.gz" for n in IDX_FILES[1:])


# ---------------------------------------------------------------- the mnist.pkl.gz route


def _mnist_like_pickle_parts(seed=0):
    rng = np.random.default_rng(seed)

    def part(n):
        pixels = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        return pixels, rng.integers(0, 10, n).astype(np.int64)

    return part(6), part(3), part(4)


def _as_float(parts):
    return tuple((x.astype(np.float32) / 256, y) for x, y in parts)


def test_idx_from_pickle_round_trip():
    parts = _mnist_like_pickle_parts()
    pkl_gz = gzip.compress(pickle.dumps(_as_float(parts), protocol=4))
    out = download.idx_from_pickle(pkl_gz)
    assert sorted(out) == sorted(IDX_FILES)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    train_images = idx.decode(out["train-images-idx3-ubyte"])
    assert train_images.shape == (9, 28, 28)
    np.testing.assert_array_equal(train_images, np.concatenate([x_tr, x_va]).reshape(-1, 28, 28))
    np.testing.assert_array_equal(idx.decode(out["train-labels-idx1-ubyte"]), np.concatenate([y_tr, y_va]))
    np.testing.assert_array_equal(idx.decode(out["t10k-images-idx3-ubyte"]), x_te.reshape(-1, 28, 28))
    np.testing.assert_array_equal(idx.decode(out["t10k-labels-idx1-ubyte"]), y_te)
    assert idx.decode(out["t10k-labels-idx1-ubyte"]).dtype == np.uint8


def test_idx_from_pickle_rejects_inexact_pixels():
    (x_tr, y_tr), va, te = _as_float(_mnist_like_pickle_parts())
    x_tr = x_tr.copy()
    x_tr[0, 0] = 0.3  # not k/256
    pkl_gz = gzip.compress(pickle.dumps(((x_tr, y_tr), va, te), protocol=4))
    with pytest.raises(SourceError, match="multiples of 1/256"):
        download.idx_from_pickle(pkl_gz)


class _Evil:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvalEvil])
@pytest.mark.parametrize("where", ["top", "nested"])
def test_idx_from_pickle_refuses_code_execution(tmp_path, evil_cls, where):
    marker = tmp_path / "pwned"
    evil = evil_cls(marker)
    if where == "top":
        payload = evil
    else:
        (x_tr, y_tr), va, te = _as_float(_mnist_like_pickle_parts())
        payload = ((x_tr, evil), va, te)
    pkl_gz = gzip.compress(pickle.dumps(payload, protocol=4))
    with pytest.raises((pickle.UnpicklingError, SourceError)) as info:
        download.idx_from_pickle(pkl_gz)
    assert "refusing to load" in str(info.value)
    assert not marker.exists()


def test_evil_pickle_marker_mechanism_works(tmp_path):
    """Proves the marker check above can fail: the same payload does execute under plain pickle."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_EvalEvil(marker)))
    assert marker.exists()


# ---------------------------------------------------------------- the stage script


def test_stage_script_all_sources_failing_exits_2(tmp_path, tiny_idx, idx_http_server):
    """src/download.py with every source failing: exit 2, one 'error:' message naming the sources, no files."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    dead = f"http://127.0.0.1:{closed_port()}/mnist/"
    mirrors = [idx_http_server.url("good"), idx_http_server.url("404"), dead]
    params["download"] = {"local_dir": None, "mirrors": mirrors, "registry_mirror": False, "timeout_s": 2}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out_dir = tmp_path / "raw"
    proc = subprocess.run(
        [sys.executable, "src/download.py", str(out_dir), "--params", str(params_file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: could not obtain verified MNIST files"), proc.stderr
    assert "Traceback" not in proc.stderr
    for name in IDX_FILES:
        assert f"{name}:" in proc.stderr
    for url in mirrors:
        assert f"mirror {url}" in proc.stderr
    assert "MD5 mismatch" in proc.stderr  # the tiny files are not MNIST
    assert "HTTP 404" in proc.stderr
    assert "skipped, unreachable earlier" in proc.stderr
    assert "package registry" not in proc.stderr
    assert _listing(out_dir) == []
    assert len(idx_http_server.requests_for("good")) == 4


def test_damaged_gzip_body_falls_back_to_next_source(tmp_path, tiny_idx):
    """A .gz whose deflate stream is damaged (zlib.error, not EOFError) is a source failure, not a crash."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, data in tiny_idx.data.items():
        gz = bytearray(gzip.compress(data))
        for i in range(12, len(gz) - 8):  # scramble the deflate stream, keep header and trailer
            gz[i] ^= 0x5A
        (bad / f"{name}.gz").write_bytes(bytes(gz))
    dest = tmp_path / "raw"
    fetch_all(dest, [LocalDirSource(bad), LocalDirSource(tiny_idx.directory)], tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)


# ---------------------------------------------------------------- faults leave nothing behind (issue: reliability)


@pytest.mark.parametrize("mode", ["empty", "truncgz", "corrupt", "404", "500", "garbage", "drip", "hang"])
def test_failing_mirror_leaves_no_partial_file(tmp_path, tiny_idx, idx_http_server, mode):
    """Whatever the fault, a failed fetch writes nothing under the output directory, within a bounded time."""
    idx_http_server.drip_s = 3.0
    dest = tmp_path / "raw"
    start = time.monotonic()
    with pytest.raises(DownloadError):
        fetch_all(dest, [MirrorSource(idx_http_server.url(mode), 0.2)], tiny_idx.md5, log=lambda _: None)
    assert time.monotonic() - start < 10
    assert _listing(dest) == []


def test_zero_length_files_are_rejected_and_the_next_source_used(tmp_path, tiny_idx, idx_http_server):
    empty = tmp_path / "zero"
    empty.mkdir()
    for name in IDX_FILES:
        (empty / name).write_bytes(b"")
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / IDX_FILES[0]).write_bytes(b"")  # a zero-length file already present is not "verified"
    sources = [LocalDirSource(empty), MirrorSource(idx_http_server.url("empty"), 2),
               MirrorSource(idx_http_server.url("good"), 2)]
    fetch_all(dest, sources, tiny_idx.md5, log=lambda _: None)
    _assert_verified(dest, tiny_idx.md5)
    assert len(idx_http_server.requests_for("empty")) == 4  # a zero-length reply does not mark the source down


def test_all_sources_failing_leaves_previous_good_data_untouched(tmp_path, tiny_idx, idx_http_server):
    """Two verified files, one damaged, one missing; every source fails: nothing already there changes."""
    dest = tmp_path / "raw"
    make_idx_dataset(dest, n_train=20, n_test=10, seed=0)
    (dest / IDX_FILES[2]).write_bytes(b"damaged")
    (dest / IDX_FILES[3]).unlink()
    before = {p.name: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in dest.iterdir()}
    sources = [MirrorSource(idx_http_server.url(m), 0.2) for m in ("truncgz", "500", "hang")]
    with pytest.raises(DownloadError) as info:
        fetch_all(dest, sources, tiny_idx.md5, log=lambda _: None)
    assert list(_parse_error(str(info.value))) == list(IDX_FILES[2:])
    assert {p.name: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in dest.iterdir()} == before


def test_stage_with_verified_data_needs_no_network(tmp_path, idx_http_server, mnist_raw):
    """src/download.py with the real, verified MNIST files present: exit 0 without contacting any source
    (the only mirrors configured hang or refuse connections, the registry is off)."""
    out_dir = tmp_path / "raw"
    out_dir.mkdir()
    for name in IDX_FILES:
        (out_dir / name).write_bytes((mnist_raw / name).read_bytes())
    mtimes = {name: os.stat(out_dir / name).st_mtime_ns for name in IDX_FILES}
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["download"] = {"local_dir": None, "registry_mirror": False, "timeout_s": 5,
                          "mirrors": [idx_http_server.url("hang"), f"http://127.0.0.1:{closed_port()}/"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([sys.executable, "src/download.py", str(out_dir), "--params", str(tmp_path / "params.yaml")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already present and verified") == 4
    assert idx_http_server.requests == []
    assert {name: os.stat(out_dir / name).st_mtime_ns for name in IDX_FILES} == mtimes
