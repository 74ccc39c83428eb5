"""Pull-request review in Markdown: the workspace against a base revision, read in ten seconds.

    python scripts/pr_report.py main                      # writes pr-report/report.md and the changed figures
    python scripts/pr_report.py origin/main --out-dir DIR

First a headline table: test accuracy and loss, mean accuracy under perturbations, training time and inference
speed, base | this branch | change; each timing names the machine class that measured it (the key ``machine`` of
its metrics file), and a change between two different machine classes is not given. Then, folded in ``<details>``:
the full `dvc params diff` and `dvc metrics diff` and the changed figures.

CI posts report.md as one pull-request comment, updated on every push (.github/workflows/pr-review.yml); the
images are referenced by paths relative to report.md, so it also reads locally in any Markdown viewer.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from digits import reporting
from digits.files import write_text

MARKER = "<!-- digits-pr-review -->"  # lets the workflow find its own comment
HEADLINE = ("test_accuracy", "test_loss", "robustness_mean", "train_seconds", "inference_images_per_second")
TIMINGS = {"train_seconds", "inference_images_per_second"}  # comparable only when measured on one machine class
NOT_RECORDED = "machine not recorded"


def dvc(*args: str) -> str:
    """stdout of a dvc command; exits with dvc's own error message when it fails."""
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: `dvc {' '.join(args)}` failed:\n{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def folded(what: str, table: str, nothing: str) -> list[str]:
    """A Markdown ``table`` in a ``<details>`` block, collapsed under "WHAT: N changed" (blank lines around it keep
    it rendering as a table); ``nothing``, unfolded, when the table has no rows (``dvc ... diff --md`` prints a bare
    header when nothing differs)."""
    changed = len(table.splitlines()) - 2
    if changed <= 0:
        return [nothing, ""]
    return [f"<details><summary>{what}: {changed} changed</summary>", "", table, "", "</details>", ""]


def headline(metrics: dict[str, dict[str, dict]], base: str) -> str:
    """The headline rows of ``metrics`` (`dvc metrics diff --all --json`: file -> key -> {"old", "new"}) as a
    Markdown table, labelled and formatted as in the run report (reporting.COMPARED). A timing row names the
    machine class of both sides when they agree; otherwise each value names its own, and the change between two
    recorded, different classes is left out."""
    lines = [f"| | `{base}` | this branch | change |", "|---|---:|---:|---:|"]
    for label, source, keys, fmt in (c for c in reporting.COMPARED if c[2][0] in HEADLINE):
        entries = metrics.get(f"metrics/{source}.json", {})
        old, new = (reporting.lookup(entries.get(keys[0]), (side,)) for side in ("old", "new"))
        change = None if old is None or new is None else new - old
        cells = [reporting.format_value(v, fmt) for v in (old, new)] + [reporting.format_value(change, fmt, True)]
        if keys[0] in TIMINGS:
            machine = entries.get("machine", {})
            before, after = (machine.get(side) or NOT_RECORDED for side in ("old", "new"))
            if before == after:
                label = f"{label}, {after}"
            else:
                for i, (value, machine_class) in enumerate(((old, before), (new, after))):
                    if value is not None:
                        cells[i] += f" ({machine_class})"
                if NOT_RECORDED not in (before, after):
                    cells[2] = "— (other machine class)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def changed_figures(base: str, images_dir: Path) -> list[tuple[str, Path | None, Path]]:
    """(plot name, base image or None when new, workspace image) for every image plot that differs from ``base``."""
    plots = json.loads(dvc("plots", "diff", base, "--json", "-o", str(images_dir))).get("data", {})  # {}: no plots
    changed = []
    for name, entries in plots.items():
        images = {e["revisions"][0]: Path(e["url"]) for e in entries if e["type"] == "image"}
        new = images.pop("workspace", None)
        old = next(iter(images.values()), None)
        if new is not None and (old is None or not filecmp.cmp(old, new, shallow=False)):
            changed.append((name, old, new))
    return changed


def report(base: str, out_dir: Path) -> str:
    """The Markdown comment; figures are exported under ``out_dir/plots`` and linked relative to ``out_dir``."""
    images_dir = out_dir / "plots"
    shutil.rmtree(images_dir, ignore_errors=True)
    params = dvc("params", "diff", base, "--md")
    metrics = dvc("metrics", "diff", base, "--md")
    all_metrics = json.loads(dvc("metrics", "diff", base, "--all", "--json") or "{}")
    figures = changed_figures(base, images_dir)
    rows = [f"| figure | `{base}` | this branch |", "|---|---|---|"]
    for name, old, new in figures:
        before = f"![{name} on {base}]({os.path.relpath(old, out_dir)})" if old else "(new)"
        rows.append(f"| `{name}` | {before} | ![{name}]({os.path.relpath(new, out_dir)}) |")
    return "\n".join([
        MARKER, f"## digits: this branch against `{base}`", "", headline(all_metrics, base), "",
        *folded("Parameters", params, "No parameter changed."),
        *folded("All metrics", metrics, "No metric changed."),
        *folded("Figures", "\n".join(rows), "No figure changed."),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare the workspace with, e.g. main or origin/main")
    parser.add_argument("--out-dir", type=Path, default=Path("pr-report"), help="where report.md and figures go")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text(args.out_dir / "report.md", report(args.base, args.out_dir))
    print(args.out_dir / "report.md")


if __name__ == "__main__":
    main()
