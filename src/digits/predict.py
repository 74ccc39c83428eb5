"""Classify digit image files (PNG, JPEG, ...; any size, colour and polarity) with the registered champion model
or a local checkpoint. Prints one line per file, or JSON with --json; exit status 1 if any file failed.

  digits-predict img1.png img2.jpg                      # models:/<register.model_name>@champion
  digits-predict --model models:/digits-mnist/3 *.png   # any MLflow model URI of the pyfunc model
  digits-predict --checkpoint models/model.pt --json *.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from digits import imageprep, params, serving, tracking
from digits.errors import UserError

Classifier = Callable[[np.ndarray], pd.DataFrame]  # float32 [N, 28, 28] in [0, 1] → serving.COLUMNS


def default_model_uri(params_file: str | Path = "params.yaml") -> str:
    """``models:/<register.model_name>@champion``, the name from params.yaml when there is one."""
    name = params.load(params_file).register.model_name if Path(params_file).is_file() else None
    return f"models:/{name or params.RegisterParams().model_name}@champion"


def checkpoint_classifier(path: str | Path) -> Classifier:
    import torch

    from digits import training

    network, _ = training.load_checkpoint(path)

    def classify(images: np.ndarray) -> pd.DataFrame:
        x = torch.from_numpy(serving.to_images(images))
        return serving.probabilities_frame(training.predict_logits(network, x))

    return classify


def mlflow_classifier(uri: str) -> Classifier:
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MlflowException, missing artifacts, ...: one line naming the URI
        raise UserError(f"cannot load model {uri} from {tracking.tracking_uri()}: {exc}".splitlines()[0]) from None
    return model.predict


def classify_files(paths: list[str], classify: Classifier) -> list[dict]:
    """One result per path, in order: {file, class, confidence, probabilities} or {file, error}."""
    results: list[dict] = [{"file": p} for p in paths]
    images, ok = [], []
    for i, path in enumerate(paths):
        try:
            images.append(imageprep.load(path))
            ok.append(i)
        except imageprep.ImageError as exc:
            results[i]["error"] = str(exc)
    for start in range(0, len(ok), serving.MAX_BATCH):
        chunk = ok[start : start + serving.MAX_BATCH]
        frame = classify(np.stack(images[start : start + serving.MAX_BATCH]))
        for i, answer in zip(chunk, answers(frame), strict=True):
            results[i] |= answer
    return results


def answers(frame: pd.DataFrame) -> list[dict]:
    """A classifier's output as one {class, confidence, probabilities} per image."""
    out = []
    for row in frame.itertuples(index=False):
        probs = [float(getattr(row, c)) for c in serving.COLUMNS[1:]]
        out.append({"class": int(row[0]), "confidence": max(probs), "probabilities": probs})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="digits-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("images", nargs="+", help="image files")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--model", help="MLflow model URI (default: models:/<register.model_name>@champion)")
    source.add_argument("--checkpoint", help="a local checkpoint written by the train stage (models/model.pt)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of one line per file")
    args = ap.parse_args(argv)
    try:
        classify = (
            checkpoint_classifier(args.checkpoint)
            if args.checkpoint
            else mlflow_classifier(args.model or default_model_uri())
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = classify_files(args.images, classify)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr)
            else:
                print(f"{r['file']}: {r['class']} (confidence {r['confidence']:.3f})")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
