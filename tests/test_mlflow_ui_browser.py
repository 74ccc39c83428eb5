"""The MLflow UI on a project store, seen in a real headless Chromium: the documented `bash scripts/dev.sh ui`
serves it on a free loopback port; the experiment opens on its runs table, which shows each run's `lr`, test
accuracy and training dataset, and the compare view of the runs opens. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from helpers import BIN, CHROMIUM_FLAGS, REPO, chromium, closed_port, served, store_uri

from digits import tracking

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
RUNS = {"exp-brisk-lr": ("0.01", 0.9731), "exp-gentle-lr": ("0.003", 0.9512)}  # run name: (lr, test accuracy)


@pytest.fixture
def store(tmp_path, monkeypatch) -> tuple[str, dict[str, str]]:
    """A sqlite store made as the stages make it (tracking.experiment_id: a model-training experiment), holding two
    finished runs with their data splits as dataset inputs; (experiment id, name -> run id)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp_path))
    monkeypatch.chdir(tmp_path)  # the project root: artifacts under ./mlartifacts, dataset paths relative to it
    for split in ("train", "val"):
        (tmp_path / "data/processed").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"data/processed/{split}.pt").write_bytes(split.encode())
    exp = tracking.experiment_id()
    client = mlflow.MlflowClient()
    ids = {}
    for name, (lr, accuracy) in RUNS.items():
        run = client.create_run(exp, run_name=name, tags={"dvc_exp_name": name})
        client.log_param(run.info.run_id, "lr", lr)
        client.log_metric(run.info.run_id, "test_accuracy", accuracy)
        with mlflow.start_run(run_id=run.info.run_id):
            tracking.log_datasets({"training": "data/processed/train.pt", "validation": "data/processed/val.pt"})
        ids[name] = run.info.run_id
    return exp, ids


@pytest.fixture
def ui(tmp_path, store) -> Iterator[str]:
    """The UI on the test store, started by the README's command, on a free 127.0.0.1 port; its base URL."""
    port = closed_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri(tmp_path), "PORT": str(port)}
    if (REPO / ".venv/bin/mlflow").exists():  # set up by `bash scripts/dev.sh test`, as in CI
        cmd = ["bash", str(REPO / "scripts/dev.sh"), "ui"]
    else:  # a shared environment (this project's helper setup): the same command line dev.sh runs
        cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", env["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1",
               "--port", str(port)]
    with served(cmd, REPO, env, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", timeout_s=180):
        yield f"http://127.0.0.1:{port}"


def test_runs_with_lr_and_accuracy_are_visible_and_compare_opens(ui: str, store, tmp_path: Path):
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is a dev dependency")
    experiment_id, run_ids = store
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 2000, "height": 900})
        page.set_default_timeout(90_000)  # the React app's first render is slow on a loaded machine

        link = tracking.runs_url(ui)  # what `bash scripts/dev.sh ui` prints
        if (REPO / ".venv/bin/mlflow").exists():
            assert f"MLflow UI; the training runs: {link}" in (tmp_path / "ui.log").read_text()
        page.goto(link)
        for name in RUNS:
            page.get_by_role("link", name=name).wait_for()
        assert f"/experiments/{experiment_id}/runs?" in page.url, page.url  # the training runs, not GenAI's overview
        page.get_by_role("button", name="Model training").wait_for()
        page.screenshot(path=tmp_path / "landing.png")
        close_assistant = page.get_by_role("button", name="Close", exact=True)  # MLflow 3's chat panel takes room
        if close_assistant.count() == 1:
            close_assistant.click()
        page.get_by_role("button", name="Columns").click()  # params and metrics are opt-in columns in MLflow 3
        for column in ("lr", "test_accuracy"):
            page.locator("[class*=tree-treenode]", has=page.get_by_title(column, exact=True)) \
                .locator("[class*=tree-checkbox]").first.click()
        page.keyboard.press("Escape")
        headers = page.get_by_role("columnheader")
        for column in ("lr", "test_accuracy"):
            headers.filter(has_text=column).first.wait_for()
        for name, (lr, accuracy) in RUNS.items():  # ag-grid splits a row into pinned parts, all with its row-id
            row = page.locator(f"[role=row][row-id='{run_ids[name]}']")
            text = " ".join(row.all_inner_texts()).split()
            assert name in text and lr in text and str(accuracy) in text, (name, text)
            assert "mnist-train" in text, (name, text)  # the Dataset column: the run's training split
        page.get_by_role("columnheader").filter(has_text="Dataset").first.wait_for()
        page.screenshot(path=tmp_path / "runs.png")

        for name in RUNS:
            page.locator(f"[role=row][row-id='{run_ids[name]}'] [role=checkbox], "
                         f"[role=row][row-id='{run_ids[name]}'] input[type=checkbox]").first.click()
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Comparing 2 Runs").wait_for()
        assert "compare-runs" in page.url
        for name in RUNS:
            page.get_by_text(name, exact=True).first.wait_for()
        params = page.locator("tr", has=page.get_by_text("lr", exact=True)).first.inner_text().split()
        assert params == ["lr", "0.01", "0.003"] or params == ["lr", "0.003", "0.01"], params
        page.get_by_role("link", name="test_accuracy").wait_for()  # the metrics grid: name, then one cell per run
        for _, accuracy in RUNS.values():
            page.get_by_text(f"{accuracy:.3f}", exact=True).first.wait_for()
        page.set_viewport_size({"width": 2000, "height": 1600})  # the page scrolls inside the app: show the tables
        page.get_by_text("Show diff only").last.scroll_into_view_if_needed()
        page.screenshot(path=tmp_path / "compare.png")
        browser.close()
    print(f"screenshots: {tmp_path / 'landing.png'} {tmp_path / 'runs.png'} {tmp_path / 'compare.png'}")
