"""The pull-request workflow cannot run here; check what it promises: it parses, runs on pull requests with the full
history, reproduces, writes the comment with scripts/pr_report.py and updates one comment instead of adding more."""

from __future__ import annotations

import yaml
from helpers import REPO

WORKFLOW = REPO / ".github/workflows/pr-review.yml"


def test_pr_review_workflow_reproduces_and_updates_one_comment():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["review"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    commands = [s.get("run", "") for s in steps]
    order = [next(i for i, c in enumerate(commands) if needle in c)
             for needle in ("dev.sh setup", "dvc pull", "dvc repro", "scripts/pr_report.py", "cml comment update")]
    assert order == sorted(order)
    post = commands[order[-1]]
    assert "--watermark-title" in post and "cml comment create" not in "\n".join(commands)
    assert (REPO / "scripts/pr_report.py").is_file()
