"""Stage evaluate: test-set loss, accuracy, per-class precision/recall/F1 and the confusion matrix.

Writes METRICS_DIR/evaluate.json, METRICS_DIR/plots/confusion.csv (DVC `confusion` plot data: one row per
test image) and FIG_DIR/confusion_matrix.png, and adds them to the MLflow run of the train stage.
"""

import statistics
import time
from pathlib import Path

import mlflow
import torch

from digits import data, device, figures, files, metrics, models, params, stage, tracking, training


def timed_passes(model: torch.nn.Module, x: torch.Tensor, batch_size: int, repeats: int) -> list[float]:
    """Images/s of ``repeats`` full batched inference passes over ``x``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        training.predict_logits(model, x, batch_size)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(x) / (time.perf_counter() - start))
    return rates


def main() -> None:
    ap = stage.parser(__doc__)
    for name in ("model_dir", "test_file", "metrics_dir", "fig_dir"):
        ap.add_argument(name)
    args = ap.parse_args()
    p = params.load(args.params).evaluate
    model_dir, metrics_dir, fig_path = Path(args.model_dir), Path(args.metrics_dir), Path(args.fig_dir)

    run_info = files.read_json(model_dir / "run.json", "train")
    tracking.require_run(run_info["run_id"])  # before any output is rewritten
    test = data.load_split(args.test_file)
    dev = device.select("auto")
    device.configure(dev, seed=0, deterministic=True)  # CPU threads from what the process may use
    model, _ = training.load_checkpoint(model_dir / "model.pt", dev)
    model = models.fuse_for_inference(model)  # BatchNorm folded into the convolutions: same outputs, faster
    if dev.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    x, _ = data.to_device(test, dev)
    logits = training.predict_logits(model, x, p.batch_size).float().cpu()  # also the warm-up
    images_per_second = statistics.median(timed_passes(model, x, p.batch_size, repeats=5))
    pred = logits.argmax(1)

    result = metrics.classification(logits, test.labels)
    cm = metrics.confusion(test.labels, pred)
    per_class = result.pop("per_class")
    result["inference_images_per_second"] = round(images_per_second)
    files.write_json(metrics_dir / "evaluate.json", result)
    files.write_csv(metrics_dir / "plots" / "per_class.csv", [{"digit": int(d), **v} for d, v in per_class.items()])
    files.write_csv(
        metrics_dir / "plots" / "confusion.csv",
        [{"actual": int(a), "predicted": int(b)} for a, b in zip(test.labels, pred, strict=True)],
    )
    figures.confusion_matrix(cm, fig_path / "confusion_matrix.png")
    print(
        f"test accuracy {result['test_accuracy']:.4f} ({result['test_errors']} errors of {len(test)}), "
        f"loss {result['test_loss']:.4f}"
    )

    with tracking.resume_run(run_info["run_id"]):
        mlflow.log_metrics({k: result[k] for k in ("test_loss", "test_accuracy", "test_errors")})
        mlflow.log_metrics({f"test_macro_{k.replace('-score', '')}": v for k, v in result["macro_avg"].items()})
        mlflow.log_dict({**result, "per_class": per_class}, "metrics/evaluate.json")
        mlflow.log_dict({"confusion_matrix": cm.tolist()}, "metrics/confusion_matrix.json")
        mlflow.log_artifact(str(fig_path / "confusion_matrix.png"), "figures")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    stage.run(main)
