"""scripts/retry.sh, which set-up wraps every registry download in (scripts/dev.sh, .ci/run): up to three tries, 30 s
and then 60 s apart, the last try's status. A `sleep` on PATH records the pauses instead of waiting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

# a command that fails (status 3) until its third call, counting its calls in ./calls
THIRD_TIME_LUCKY = 'n=$(( $(cat calls 2>/dev/null || echo 0) + 1 )); echo $n > calls; ((n >= 3)) || exit 3'


def retry(tmp_path: Path, command: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sleep").write_text('#!/bin/sh\necho "$1" >> "$(dirname "$0")/../slept"\n')
    (bin_dir / "sleep").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REPO / "scripts" / "retry.sh"), "bash", "-c", command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_command_that_fails_twice_succeeds_on_the_third_try(tmp_path: Path) -> None:
    proc = retry(tmp_path, THIRD_TIME_LUCKY)
    assert proc.returncode == 0 and (tmp_path / "calls").read_text() == "3\n"
    assert (tmp_path / "slept").read_text().split() == ["30", "60"]
    assert proc.stderr.count("of 3 failed: bash -c") == 2 and "again in 60 s" in proc.stderr


@pytest.mark.parametrize("first_ok", [True, False])
def test_three_tries_at_most_and_the_last_status(tmp_path: Path, first_ok: bool) -> None:
    proc = retry(tmp_path, "echo x >> calls; exit 0" if first_ok else "echo x >> calls; exit 3")
    assert proc.returncode == (0 if first_ok else 3)
    assert (tmp_path / "calls").read_text().count("x") == (1 if first_ok else 3)
    assert (tmp_path / "slept").exists() != first_ok
    assert ("failed 3 times: bash -c echo x >> calls; exit 3" in proc.stderr) != first_ok
