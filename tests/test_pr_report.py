"""scripts/pr_report.py: the headline a reviewer reads first (fabricated `dvc metrics diff --all --json` data), the
full diffs folded under it, and the script for real on a tiny DVC project of two metrics files (no pipeline)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from helpers import BIN, REPO, git_commit, run

SPEC = importlib.util.spec_from_file_location("pr_report", REPO / "scripts/pr_report.py")
pr_report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pr_report)

AVX512, AVX2 = "CPU AVX-512, 2 cores", "CPU AVX2, 2 cores"


def diff(train: dict[str, tuple], evaluate: dict[str, tuple]) -> dict[str, dict[str, dict]]:
    """`dvc metrics diff --all --json` from {key: (old, new)} per file."""
    files = {"metrics/train.json": train, "metrics/evaluate.json": evaluate}
    return {path: {k: {"old": old, "new": new} for k, (old, new) in d.items()} for path, d in files.items()}


def rows(table: str) -> dict[str, list[str]]:
    """The headline's rows: label -> [base, this branch, change]."""
    cells = [re.split(r"\s*\|\s*", line.strip("| ")) for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in cells}


EVALUATE = {"test_accuracy": (0.9959, 0.9961), "test_loss": (0.0606, 0.0598), "robustness_mean": (0.8376, 0.8123),
            "inference_images_per_second": (47473, 45000)}  # fmt: skip


def test_headline_rows_in_order_formatted_like_the_run_report():
    table = pr_report.headline(diff({"train_seconds": (150.68, 160.2), "machine": (AVX512, AVX512)},
                                    {**EVALUATE, "machine": (AVX512, AVX512)}), "main")  # fmt: skip
    assert table.splitlines()[0] == "| | `main` | this branch | change |"
    assert rows(table) == {
        "test accuracy": ["99.59%", "99.61%", "+0.02 pp"],
        "test loss": ["0.0606", "0.0598", "-0.0008"],
        "mean accuracy under perturbations": ["83.76%", "81.23%", "-2.53 pp"],
        f"training time (s), {AVX512}": ["150.7", "160.2", "+9.5"],
        f"inference (images/s), {AVX512}": ["47,473", "45,000", "-2,473"],
    }


def test_timings_on_different_machine_classes_name_each_and_give_no_change():
    table = pr_report.headline(diff({"train_seconds": (150.68, 602.5), "machine": (AVX512, AVX2)},
                                    {**EVALUATE, "machine": (AVX512, AVX512)}), "main")  # fmt: skip
    assert rows(table)["training time (s)"] == [f"150.7 ({AVX512})", f"602.5 ({AVX2})", "— (other machine class)"]
    assert rows(table)[f"inference (images/s), {AVX512}"][2] == "-2,473"  # evaluate ran on one class: compared
    assert rows(table)["test accuracy"][2] == "+0.02 pp"  # not a timing: compared whatever the machine


def test_timings_without_a_recorded_machine_say_so():
    table = pr_report.headline(diff({"train_seconds": (150.68, 160.2)},
                                    {**EVALUATE, "machine": (None, AVX512)}), "main")  # fmt: skip
    assert rows(table)["training time (s), machine not recorded"] == ["150.7", "160.2", "+9.5"]
    assert rows(table)["inference (images/s)"] == ["47,473 (machine not recorded)", f"45,000 ({AVX512})", "-2,473"]


def test_metrics_missing_on_one_side_are_dashes():
    table = pr_report.headline(diff({"train_seconds": (None, 12.0), "machine": (None, AVX2)}, {}), "main")
    assert rows(table)["training time (s)"] == ["—", f"12.0 ({AVX2})", "—"]
    assert rows(table)["test accuracy"] == ["—", "—", "—"]
    assert rows(pr_report.headline({}, "main"))["test loss"] == ["—", "—", "—"]


def test_folded_table_counts_its_rows_and_an_empty_one_is_a_sentence():
    table = "| Path | Param | main | workspace |\n|---|---|---|---|\n| params.yaml | train.lr | 0.003 | 0.05 |"
    assert pr_report.folded("Parameters", table, "No parameter changed.") == [
        "<details><summary>Parameters: 1 changed</summary>", "", table, "", "</details>", ""]  # fmt: skip
    empty = "| Path | Param | main | workspace |\n|---|---|---|---|"
    assert pr_report.folded("Parameters", empty, "No parameter changed.") == ["No parameter changed.", ""]


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A git + DVC repository whose one stage declares metrics/train.json and metrics/evaluate.json (its `cmd` never
    runs) and reads params.yaml; committed on `main` with the machine recorded by train only."""
    project = tmp_path / "tiny"
    project.mkdir()
    run(["git", "init", "-q", "-b", "main"], project)
    run(["dvc", "init", "-q"], project)
    (project / "params.yaml").write_text("train:\n  lr: 0.003\n")
    (project / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: 'false'\n    params: [train]\n    metrics:\n"
        "      - metrics/train.json: {cache: false}\n      - metrics/evaluate.json: {cache: false}\n"
    )
    write_json(project / "metrics/train.json", {"train_seconds": 150.68, "machine": AVX512})
    write_json(project / "metrics/evaluate.json", {"test_accuracy": 0.9959, "test_loss": 0.0606})
    git_commit(project, "main")
    return project


def pr_report_md(project: Path, base: str) -> str:
    out = project / "pr"
    printed = run([str(BIN / "python"), str(REPO / "scripts/pr_report.py"), base, "--out-dir", str(out)], project)
    assert printed.stdout.strip() == str(out / "report.md")
    return (out / "report.md").read_text()


def test_report_puts_the_headline_first_and_folds_the_full_diffs(tiny_project: Path):
    (tiny_project / "params.yaml").write_text("train:\n  lr: 0.05\n")
    write_json(tiny_project / "metrics/train.json", {"train_seconds": 160.2, "machine": AVX512})
    write_json(tiny_project / "metrics/evaluate.json", {"test_accuracy": 0.9961, "test_loss": 0.0606})
    report = pr_report_md(tiny_project, "main")
    lines = report.splitlines()
    assert lines[:2] == ["<!-- digits-pr-review -->", "## digits: this branch against `main`"]
    first_fold = lines.index("<details><summary>Parameters: 1 changed</summary>")
    headline = rows("\n".join(line for line in lines[:first_fold] if line.startswith("|")))
    assert headline["test accuracy"] == ["99.59%", "99.61%", "+0.02 pp"]
    assert headline["test loss"] == ["0.0606", "0.0606", "+0.0000"]  # unchanged: still a headline row
    assert headline[f"training time (s), {AVX512}"] == ["150.7", "160.2", "+9.5"]
    assert headline["inference (images/s), machine not recorded"] == ["—", "—", "—"]
    folds = [line for line in lines if line.startswith("<details>")]
    assert folds == ["<details><summary>Parameters: 1 changed</summary>",
                     "<details><summary>All metrics: 2 changed</summary>"]  # fmt: skip
    assert any(re.match(r"\| params\.yaml\s+\| train\.lr\s+\| 0\.003\s+\| 0\.05", line) for line in lines)
    assert any(re.match(r"\| metrics/train\.json\s+\| train_seconds\s+\| 150\.68\s+\| 160\.2", line) for line in lines)
    assert lines.count("</details>") == 2 and "No figure changed." in lines


def test_report_of_an_unchanged_branch_says_nothing_changed(tiny_project: Path):
    report = pr_report_md(tiny_project, "HEAD")
    assert "<details>" not in report
    for nothing in ("No parameter changed.", "No metric changed.", "No figure changed."):
        assert nothing in report.splitlines()
