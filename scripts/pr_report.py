"""Pull-request review in Markdown: params, metrics and changed figures of the workspace against a base revision.

    python scripts/pr_report.py main                      # writes pr-report/report.md and the changed figures
    python scripts/pr_report.py origin/main --out-dir DIR

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

from digits.files import write_text

MARKER = "<!-- digits-pr-review -->"  # lets the workflow find its own comment


def dvc(*args: str) -> str:
    """stdout of a dvc command; exits with dvc's own error message when it fails."""
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: `dvc {' '.join(args)}` failed:\n{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def table_or(markdown: str, nothing: str) -> str:
    """``dvc ... diff --md`` prints a bare header row when nothing differs; say so in words instead."""
    return markdown if len(markdown.splitlines()) > 2 else nothing


def changed_figures(base: str, images_dir: Path) -> list[tuple[str, Path | None, Path]]:
    """(plot name, base image or None when new, workspace image) for every image plot that differs from ``base``."""
    plots = json.loads(dvc("plots", "diff", base, "--json", "-o", str(images_dir)))["data"]
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
    figures = changed_figures(base, images_dir)
    lines = [MARKER, f"## digits: this branch against `{base}`", "", "### Parameters", "",
             table_or(params, "No parameter changed."), "", "### Metrics", "",
             table_or(metrics, "No metric changed."), "",
             "### Changed figures", ""]
    if figures:
        lines += [f"| figure | `{base}` | this branch |", "|---|---|---|"]
        for name, old, new in figures:
            before = f"![{name} on {base}]({os.path.relpath(old, out_dir)})" if old else "(new)"
            lines.append(f"| `{name}` | {before} | ![{name}]({os.path.relpath(new, out_dir)}) |")
    else:
        lines.append("No figure changed.")
    return "\n".join(lines) + "\n"


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
