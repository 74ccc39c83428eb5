"""Stage report: reports/report.md and a self-contained reports/report.html of the run.

Reads the run record, the metrics and figures the earlier stages wrote and (when present) the model-zoo table and
the robustness of the clean-only and robust recipes over seeds (docs/robustness.csv, from benchmarks/recipes.py);
compares with the metrics committed at ``report.baseline_rev``; logs both files to the run's MLflow record.
"""

from pathlib import Path

import mlflow

from digits import files, params, stage, tracking
from digits.errors import UserError
from digits.reporting import committed_json, html_page, markdown, sections

FIGURES = {"class_distribution": "preprocess", "samples": "preprocess", "training_curves": "train",
           **dict.fromkeys(["confusion_matrix", "misclassified", "predictions", "reliability", "robustness",
                            "corruptions", "font_errors"], "evaluate")}  # fmt: skip


def main() -> None:
    ap = stage.parser(__doc__)
    for name in ("model_dir", "metrics_dir", "fig_dir", "zoo_csv", "robustness_csv", "out"):
        ap.add_argument(name)
    args = ap.parse_args()
    p = params.load(args.params).report
    metrics_dir, out, zoo_path = Path(args.metrics_dir), Path(args.out), Path(args.zoo_csv)

    run = files.read_json(Path(args.model_dir) / "run.json", "train")
    evaluation = files.read_json(Path(args.model_dir) / "evaluation_run.json", "evaluate")
    tracking.require_run(evaluation["run_id"])
    train = files.read_json(metrics_dir / "train.json", "train")
    ev = files.read_json(metrics_dir / "evaluate.json", "evaluate")
    details = files.read_json(metrics_dir / "evaluation.json", "evaluate")
    figs = {name: Path(args.fig_dir) / f"{name}.png" for name in FIGURES}
    for name, path in figs.items():
        if not path.is_file():
            raise UserError(f"{path}: not found; run the {FIGURES[name]} stage (dvc repro {FIGURES[name]})")
    zoo_rows = files.read_csv(zoo_path, "model-zoo") if zoo_path.is_file() else None
    recipes_path = Path(args.robustness_csv)
    recipe_rows = files.read_csv(recipes_path, "recipe robustness") if recipes_path.is_file() else None
    baseline = {k: committed_json(p.baseline_rev, metrics_dir / f"{k}.json") for k in ("evaluate", "train")}
    parts = sections({**run, "evaluation_run_id": evaluation["run_id"]}, train, ev, details, figs, baseline,
                     p.baseline_rev, zoo_rows, zoo_path, recipe_rows)  # fmt: skip
    html_out = out.with_suffix(".html")
    files.write_text(out, markdown(p.title, parts, out))
    files.write_text(html_out, html_page(p.title, parts))
    print(f"wrote {out} and {html_out} ({len(figs)} figures)")
    with tracking.resume_run(evaluation["run_id"]):  # the run holding the metrics this report shows
        mlflow.log_artifact(str(out), "report")
        mlflow.log_artifact(str(html_out), "report")


if __name__ == "__main__":
    stage.run(main)
