"""Stage report: a Markdown report of the run (identity, headline metrics, per-class table, figures).

Reads the metrics and run record the earlier stages wrote, writes OUT (reports/report.md, figures
linked relative to it) and logs it to the run's MLflow record.
"""

import os
from pathlib import Path

import mlflow

from digits import files, params, stage, tracking


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def render(title: str, run: dict, train: dict, evaluation: dict, figures: list[Path], out: Path) -> str:
    tags = run["tags"]
    identity = [
        ["MLflow run", f"`{run['run_id']}` (experiment {run['experiment_id']})"],
        ["git commit", f"`{tags.get('git_commit', 'unknown')}`" + (" (dirty)" * (tags.get("git_dirty") == "true"))],
        ["DVC experiment", tags.get("dvc_exp_name", "— (workspace run)")],
        ["device", run["device"]],
        ["data sizes", ", ".join(f"{k} {v}" for k, v in run["data_sizes"].items())],
        *[[f"MD5 {name}", f"`{md5}`"] for name, md5 in run["data_md5"].items()],
    ]
    headline = [
        ["test accuracy", f"{evaluation['test_accuracy']:.2%}"],
        ["test errors", f"{evaluation['test_errors']} of {run['data_sizes']['test']}"],
        ["test loss", f"{evaluation['test_loss']:.4f}"],
        ["macro F1", f"{evaluation['macro_avg']['f1-score']:.4f}"],
        ["best epoch (by validation accuracy)", f"{train['best_epoch']} of {train['epochs_run']}"],
        ["validation accuracy", f"{train['val_accuracy']:.2%}"],
        ["training time", f"{train['train_seconds']:.1f} s ({train['train_images_per_second']} images/s)"],
        ["parameters", f"{train['n_parameters']:,}"],
    ]
    per_class = [
        [d, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1-score']:.4f}", int(c["support"])]
        for d, c in evaluation["per_class"].items()
    ]
    train_params = [[k, f"`{v}`"] for k, v in run["params"].items()]
    links = [(f.stem.replace("_", " "), Path(os.path.relpath(f, out.parent)).as_posix()) for f in figures]
    figs = "\n\n".join(f"![{name}]({path})" for name, path in links)
    return (
        "\n\n".join(
            [
                f"# {title}",
                "## Run identity",
                table(["", ""], identity),
                "## Headline metrics",
                table(["metric", "value"], headline),
                "## Per-class metrics (test set)",
                table(["digit", "precision", "recall", "F1", "support"], per_class),
                "## Training parameters",
                table(["param", "value"], train_params),
                "## Figures",
                figs,
            ]
        )
        + "\n"
    )


def main() -> None:
    ap = stage.parser(__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("metrics_dir")
    ap.add_argument("fig_dir")
    ap.add_argument("out")
    args = ap.parse_args()
    p = params.load(args.params).report
    metrics_dir, out = Path(args.metrics_dir), Path(args.out)

    run = files.read_json(Path(args.model_dir) / "run.json", "train")
    tracking.require_run(run["run_id"])
    train = files.read_json(metrics_dir / "train.json", "train")
    evaluation = files.read_json(metrics_dir / "evaluate.json", "evaluate")
    rows = files.read_csv(metrics_dir / "plots" / "per_class.csv", "evaluate")
    evaluation["per_class"] = {row.pop("digit"): {k: float(v) for k, v in row.items()} for row in rows}
    figures = sorted(Path(args.fig_dir).glob("*.png"))
    files.write_text(out, render(p.title, run, train, evaluation, figures, out))
    print(f"wrote {out} ({len(figures)} figures)")
    with tracking.resume_run(run["run_id"]):
        mlflow.log_artifact(str(out), "report")


if __name__ == "__main__":
    stage.run(main)
