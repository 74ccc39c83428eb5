"""Stage evaluate: test-set metrics, calibration, robustness, out-of-distribution digits, the most confused digits
and a save/load check.

Robustness is measured twice on the test set: a severity sweep of perturbations (digits.robustness: how accuracy
falls with strength) and MNIST-C-style corruptions (digits.corruptions: one fixed severity each, none of them a
training augmentation). The out-of-distribution digits are the render stage's held-out font families.

Writes METRICS_DIR/evaluate.json (headline metrics), METRICS_DIR/evaluation.json (per-class, confusion matrix,
confused pairs, ranked errors, calibration bins, robustness tables, accuracy per font family: what the report reads),
DVC plot data under METRICS_DIR/plots/ and figures under FIG_DIR, and logs them to an MLflow run of its own, nested
under the train stage's run.
"""

import statistics
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from digits import (
    corruptions,
    data,
    device,
    figures,
    files,
    fonts,
    metrics,
    models,
    params,
    reload,
    robustness,
    stage,
    tracking,
    training,
)

FIGURES = ("confusion_matrix", "misclassified", "predictions", "reliability", "robustness", "corruptions",
           "font_errors")  # fmt: skip


def main() -> None:
    ap = stage.parser(__doc__)
    for name in ("model_dir", "test_file", "fonts_file", "metrics_dir", "fig_dir"):
        ap.add_argument(name)
    args = ap.parse_args()
    p = params.load(args.params).evaluate
    model_dir, metrics_dir, fig_dir = Path(args.model_dir), Path(args.metrics_dir), Path(args.fig_dir)

    run_info = files.read_json(model_dir / "run.json", "train")
    tracking.require_run(run_info["run_id"])  # before any output is rewritten
    test = data.load_split(args.test_file)
    font_digits, families, family = fonts.load(args.fonts_file)
    dev = device.select("auto")
    device.configure(dev, seed=0, deterministic=True)  # CPU threads from what the process may use
    # float32 convolutions in float32: cuDNN's default, TF32, rounds their inputs to 10-bit mantissas, which moved the
    # logits by 3·10⁻³ on an H200 and failed the save/load check against the CPU (docs/benchmarks.md)
    torch.backends.cudnn.allow_tf32 = False
    checkpoint_model, _ = training.load_checkpoint(model_dir / "model.pt", dev)
    model = models.for_inference(checkpoint_model, dev, p.compile)
    x, y = data.to_device(test, dev)
    logits = training.predict_logits(model, x, p.batch_size).float().cpu()  # the first pass also compiles

    save_load = reload.check(logits, {
        "checkpoint": training.predict_logits(checkpoint_model, x, p.batch_size).float().cpu(),
        "mlflow": reload.logged_model_logits(reload.logged_model(run_info["run_id"]), x, p.batch_size),
    })  # fmt: skip

    rates: list[float] = []  # images/s of each pass of ``predict``

    def predict(xb: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        predicted = training.predict_logits(model, xb, p.batch_size).argmax(1)
        device.synchronize(dev)
        rates.append(len(xb) / (time.perf_counter() - start))
        return predicted

    start = time.perf_counter()
    robust = robustness.evaluate(predict, x, y, p.seed)
    corrupted = corruptions.evaluate(predict, x, y, p.seed)
    robustness_seconds = time.perf_counter() - start
    images_per_second = statistics.median(rates)  # over the 30 passes of the test set's size: timed, not extra
    font_pred = predict(data.to_device(font_digits, dev)[0]).cpu()
    by_family = fonts.accuracy_by_family(font_pred, font_digits.labels, family, families)

    probs, labels, pred = logits.softmax(1), test.labels, logits.argmax(1)
    result = metrics.classification(logits, labels)
    per_class = result.pop("per_class")
    ece, bins = metrics.calibration(probs, labels, p.calibration_bins)
    cm = metrics.confusion(labels, pred)
    errors = metrics.ranked_errors(probs, labels)
    result |= {
        "test_ece": ece,
        **save_load,
        "robustness": {r["key"]: r["accuracy"] for r in robust[1:]},
        "robustness_mean": statistics.fmean(r["accuracy"] for r in robust[1:]),
        "inference_images_per_second": round(images_per_second),
        **corruptions.summary(corrupted),  # per corruption, the mean, the mean over those unlike any augmentation
        "ood_font_accuracy": (font_pred == font_digits.labels).double().mean().item(),
        "robustness_seconds": round(robustness_seconds, 2),
        "machine": device.machine_class(dev),  # the class of machine inference_images_per_second was measured on
    }
    details = {
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "most_confused": metrics.most_confused(cm, 10),
        "misclassified": errors[: p.misclassified_shown],
        "calibration_bins": bins,
        "robustness": robust,
        "corruptions": corrupted,
        "corruption_counterparts": corruptions.COUNTERPARTS,
        "ood_fonts": by_family,
    }
    files.write_json(metrics_dir / "evaluate.json", result)
    files.write_json(metrics_dir / "evaluation.json", details)
    plots = metrics_dir / "plots"
    plot_data = {
        "per_class": [{"digit": int(d), **v} for d, v in per_class.items()],
        "confusion": [{"actual": int(a), "predicted": int(b)} for a, b in zip(labels, pred, strict=True)],
        "calibration": [b for b in bins if b["count"]],
        "robustness": [{k: r[k] for k in ("condition", "accuracy")} for r in robust],
        "corruptions": corrupted,
        "fonts": [{"family": f, "accuracy": v["accuracy"]} for f, v in by_family.items()],
    }
    for name, rows in plot_data.items():
        files.write_csv(plots / f"{name}.csv", rows)

    images = test.images.numpy()
    sample = np.sort(np.random.default_rng(p.seed).choice(len(test), size=min(10, len(test)), replace=False))
    examples = [(name, img.cpu().numpy()) for name, img in robustness.examples(x[0], p.seed)]
    figures.confusion_matrix(cm, fig_dir / "confusion_matrix.png")
    figures.misclassified(images, details["misclassified"], fig_dir / "misclassified.png")
    figures.prediction_samples(images, labels.numpy(), probs.numpy(), sample.tolist(), fig_dir / "predictions.png")
    figures.reliability_diagram(bins, ece, fig_dir / "reliability.png")
    figures.robustness(robust, examples, fig_dir / "robustness.png")
    corrupted_examples = [("clean", images[0] / 255)] + [
        (name, img.cpu().numpy()) for name, img in corruptions.examples(x[0], p.seed)
    ]
    figures.corruptions(robust[0]["accuracy"], corrupted, corrupted_examples, set(corruptions.COUNTERPARTS),
                        fig_dir / "corruptions.png")  # fmt: skip
    figures.font_errors(font_digits.images.numpy(), font_digits.labels.numpy(), font_pred.numpy(), family.numpy(),
                        families, fig_dir / "font_errors.png", shown=p.misclassified_shown)  # fmt: skip
    print(f"test accuracy {result['test_accuracy']:.4f} ({result['test_errors']} errors of {len(test)}), "
          f"top-2 {result['test_top2_accuracy']:.4f}, loss {result['test_loss']:.4f}, ECE {ece:.4f}; "
          f"robustness: {len(robust) - 1} perturbations and {len(corrupted)} corruptions (mean "
          f"{result['corruption_mean']:.4f}) in {robustness_seconds:.1f} s; held-out font digits "
          f"{result['ood_font_accuracy']:.4f}; save/load identical")  # fmt: skip

    with tracking.evaluation_run(run_info["run_id"]) as run:
        tracking.log_datasets({"testing": args.test_file})
        tracking.log_evaluation(result, details)
        for name in FIGURES:
            mlflow.log_artifact(str(fig_dir / f"{name}.png"), "figures")
        for name in plot_data:
            mlflow.log_artifact(str(plots / f"{name}.csv"), "metrics/plots")
        evaluation_run = {"run_id": run.info.run_id, "evaluates": run_info["run_id"]}
        files.write_json(model_dir / "evaluation_run.json", evaluation_run)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    stage.run(main)
