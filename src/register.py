"""Stage register: log the pyfunc serving model into the train run, register it, apply the promotion gate.

The new version of ``register.model_name`` is tagged with its test accuracy and loss, git commit, DVC experiment
and data MD5s; it gets the alias ``champion`` if it matches or beats the current champion's test accuracy (ties
broken by test loss), else ``challenger``. The decision and both scores are kept in MLflow (the version's
``promotion_decision`` tag; the run's ``registered_model`` and ``registry_alias`` tags) and written to
MODEL_DIR/registered.json, a plain DVC output next to the checkpoint it describes, not a DVC metric: the version,
the alias and the previous champion depend on the MLflow registry this machine uses, not on the code and data that
branches are compared on. Running it again for a checkpoint of the same run that is registered already registers
nothing and writes that version's recorded decision again.
"""

from pathlib import Path

import mlflow
import numpy as np
import torch

from digits import data, files, params, registry, serving, stage, tracking, training

CHECK_IMAGES = 256  # test images the logged model must classify exactly like the checkpoint


def main() -> None:
    ap = stage.parser(__doc__)
    for name in ("model_dir", "test_file", "metrics_dir"):
        ap.add_argument(name)
    args = ap.parse_args()
    p = params.load(args.params).register
    model_dir = Path(args.model_dir)

    run_info = files.read_json(model_dir / "run.json", "train")
    result = files.read_json(Path(args.metrics_dir) / "evaluate.json", "evaluate")
    tracking.require_run(run_info["run_id"])
    identity = {"run_id": run_info["run_id"], "checkpoint_md5": files.md5_file(model_dir / "model.pt")}
    decision = registry.find_decision(p.model_name, identity)
    if decision is not None:  # this checkpoint of this run is registered already
        print(f"already registered: {decision.describe()}")
    else:
        tags = {k: v for k, v in run_info["tags"].items() if not k.startswith("mlflow.")}
        tags |= {f"data_md5.{k}": v for k, v in run_info["data_md5"].items()} | identity
        score = registry.Score(result["test_accuracy"], result["test_loss"])
        decision = register_checkpoint(model_dir / "model.pt", args.test_file, run_info["run_id"], p.model_name,
                                       score, tags)  # fmt: skip
        print(decision.describe())
    files.write_json(model_dir / "registered.json", decision.as_dict())


def register_checkpoint(
    checkpoint: Path, test_file: str, run_id: str, model_name: str, score: registry.Score, tags: dict[str, str]
) -> registry.Decision:
    """Log the serving model into the run, check it classifies like the checkpoint, register it, gate it."""
    images = data.load_split(test_file).images[:CHECK_IMAGES]
    network, _ = training.load_checkpoint(checkpoint)
    expected = training.predict_logits(network, images.unsqueeze(1).float() / 255).argmax(1).numpy()
    with tracking.resume_run(run_id):
        info = serving.log_model(checkpoint, images[:2].numpy())
    served = mlflow.pyfunc.load_model(info.model_uri).predict(images.numpy())["class"].to_numpy()
    if not np.array_equal(served, expected):
        raise RuntimeError(f"logged model disagrees with the checkpoint on {(served != expected).sum()} images")
    decision = registry.register(info.model_uri, model_name, score, tags)
    with tracking.resume_run(run_id):
        mlflow.set_tags({"registered_model": f"{model_name}/{decision.version}", "registry_alias": decision.alias})
    return decision


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    stage.run(main)
