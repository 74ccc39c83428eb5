"""dvc.yaml is the single source of wiring: every stage lists its script, every library module the script
imports (transitively), and only its own params section."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = list(DVC["stages"])


def digits_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "digits":
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
    return found


def library_closure(script: Path) -> set[str]:
    seen, todo = set(), list(digits_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += digits_imports(REPO / "src" / "digits" / f"{module}.py")
    return seen


def test_the_stages_in_order():
    assert STAGES == ["download", "preprocess", "render", "train", "evaluate", "report", "register"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_its_script_and_every_library_module_it_uses(stage: str):
    deps = set(DVC["stages"][stage]["deps"])
    script = REPO / "src" / f"{stage}.py"
    assert f"src/{stage}.py" in deps
    cmd = DVC["stages"][stage]["cmd"]
    if launcher := re.match(r"bash (scripts/\S+\.sh) ", cmd):  # e.g. scripts/tcmalloc.sh: itself a dependency
        assert launcher[1] in deps
        cmd = cmd[launcher.end() :]
    assert cmd.startswith(f"python src/{stage}.py ")
    missing = {f"src/digits/{m}.py" for m in library_closure(script)} - deps
    assert not missing, f"{stage} imports modules not in its deps: {sorted(missing)}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_tracks_exactly_its_own_params_section(stage: str):
    assert DVC["stages"][stage]["params"] == [stage]
