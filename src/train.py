"""Stage train: fit the model described by params `train`, keeping the best epoch by validation accuracy.

Writes MODEL_DIR/model.pt (state_dict + metadata), MODEL_DIR/run.json (MLflow run + run identity),
METRICS_DIR/train.json, METRICS_DIR/plots/train_curves.csv and FIG_DIR/training_curves.png.
Everything is logged to one MLflow run, which the evaluate and report stages continue.
Data-parallel: `train.nproc` > 1 relaunches this script under torchrun (or start it with torchrun yourself);
every rank trains on its shard, only rank 0 logs to MLflow and writes outputs.
"""

from contextlib import nullcontext
from pathlib import Path

import mlflow

from digits import data, device, distributed, figures, files, models, params, resume, stage, tracking, training


def resume_store(data_dir: Path, p: params.TrainParams, stats: dict, dev, directory: str | None) -> resume.Store:
    """The per-epoch resume checkpoint of this exact run (train params + processed data + device and threads +
    this code and its CPU kernels)."""
    data_identity = {"stats": stats, **{f: files.md5_file(data_dir / f) for f in ("train.pt", "val.pt")}}
    key = resume.run_key(p.model_dump(mode="json"), data_identity, device.describe(dev), resume.code_identity(__file__))
    return resume.Store(directory or resume.default_dir(), key)


def main() -> None:
    ap = stage.parser(__doc__)
    for name in ("data_dir", "model_dir", "metrics_dir", "fig_dir"):
        ap.add_argument(name)
    ap.add_argument("--resume-dir", help="where per-epoch resume checkpoints go (default: .cache/train-resume)")
    args = ap.parse_args()
    p = params.load(args.params).train
    data_dir, model_dir, metrics_dir = Path(args.data_dir), Path(args.model_dir), Path(args.metrics_dir)
    tracking.require_server()  # an unreachable tracking server fails now, not after training
    if p.nproc > 1 and not distributed.launched():
        distributed.relaunch(p.nproc)

    stats = files.read_json(data_dir / "stats.json", "preprocess")
    train_split, val_split = data.load_split(data_dir / "train.pt"), data.load_split(data_dir / "val.pt")
    dev = device.select(p.device)
    device.configure(dev, p.seed, p.deterministic)
    dev = distributed.setup(dev)
    main_rank = distributed.is_main()  # distributed: only rank 0 prints, logs to MLflow and writes outputs
    model = models.from_params(p, stats["mean"], stats["std"])
    model = training.prepare(model, p, dev)
    train_xy, val_xy = data.to_device(train_split, dev), data.to_device(val_split, dev)
    n_params = models.count_parameters(model)
    if main_rank:
        print(
            f"{p.model} ({p.arch}): {n_params:,} parameters on {device.describe(dev)} "
            f"× {distributed.world_size()} process(es); {len(train_split)} train / {len(val_split)} val images"
        )

    # resumable single-process runs (a data-parallel run would also need every rank's generators: not resumed)
    store = resume_store(data_dir, p, stats, dev, args.resume_dir) if distributed.world_size() == 1 else None
    state = store.load() if store else None
    md5_tags = {f"data_md5.{k}": v for k, v in stats["raw_md5"].items()}
    tags = {"device": device.describe(dev), **md5_tags}
    continue_run_id = state and state["run_id"]
    name = tracking.run_name(p.model)
    with (tracking.start_run(name, tags, continue_run_id=continue_run_id, system_metrics=True) if main_rank
          else nullcontext()) as run:  # fmt: skip
        if state is not None:
            resume.announce(state, store, run.info.run_id, p.epochs)
        if main_rank:
            sizes = {"train_size": len(train_split), "val_size": len(val_split), "world_size": distributed.world_size()}
            mlflow.log_params({**tracking.flat_params(params.in_use(p)), "n_parameters": n_params,
                               "device": device.describe(dev), **sizes})  # fmt: skip
            tracking.log_datasets({"training": data_dir / "train.pt", "validation": data_dir / "val.pt"})

        def on_epoch(e: training.Epoch) -> None:
            if not main_rank:
                return
            print(
                f"epoch {e.epoch:3d}  loss {e.train_loss:.4f}  acc {e.train_accuracy:.4f}  "
                f"val_loss {e.val_loss:.4f}  val_acc {e.val_accuracy:.4f}  lr {e.lr:.2e}  {e.epoch_seconds:.1f}s",
                flush=True,
            )
            mlflow.log_metrics({k: v for k, v in vars(e).items() if k != "epoch"}, step=e.epoch)

        save = store and (lambda s: store.save({**s, "run_id": run.info.run_id}))
        result = training.fit(model, train_xy, val_xy, p, on_epoch, resume=state, on_checkpoint=save)
        if not main_rank:
            return
        best = result.best
        seconds = sum(e.epoch_seconds for e in result.history)
        print(
            f"best epoch {best.epoch}: val_acc {best.val_accuracy:.4f}"
            + (" (early stop)" if result.stopped_early else "")
        )

        meta = {
            "model": p.model,
            "arch": p.arch,
            "model_kwargs": models.architecture_kwargs(p),
            "epoch": best.epoch,
            "val_accuracy": best.val_accuracy,
            "params": p.model_dump(),
        }
        training.save_checkpoint(model_dir / "model.pt", model, meta)
        rows = training.epoch_rows(result.history)
        files.write_csv(metrics_dir / "plots" / "train_curves.csv", rows)
        figures.training_curves(rows, Path(args.fig_dir) / "training_curves.png")
        metrics = {
            "best_epoch": best.epoch,
            "val_accuracy": best.val_accuracy,
            "val_loss": best.val_loss,
            "train_accuracy": best.train_accuracy,
            "train_loss": best.train_loss,
            "epochs_run": len(result.history),
            "train_seconds": round(seconds, 2),
            "train_images_per_second": round(len(train_split) * len(result.history) / seconds),
            "n_parameters": n_params,
            "peak_rss_mb": device.peak_rss_mb(),
            "machine": device.machine_class(dev),  # the class of machine train_seconds was measured on
            "malloc": stage.malloc_in_use(),  # tcmalloc under scripts/tcmalloc.sh (dvc.yaml), else the C library's
        }
        files.write_json(metrics_dir / "train.json", metrics)
        mlflow.log_metrics(
            {
                "best_epoch": best.epoch,
                "best_val_accuracy": best.val_accuracy,
                "best_val_loss": best.val_loss,
                **{k: metrics[k] for k in ("epochs_run", "train_seconds", "train_images_per_second")},
            }
        )
        mlflow.set_tags({"machine": metrics["machine"], "malloc": metrics["malloc"]})
        mlflow.log_artifact(str(Path(args.fig_dir) / "training_curves.png"), "figures")

        tracking.log_model(model, val_xy[0][:4])
        files.write_json(model_dir / "run.json", {
            "run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": tracking.tracking_uri(),
            "device": device.describe(dev), "tags": tracking.identity(), "params": p.model_dump(),
            "data_md5": stats["raw_md5"], "data_sizes": stats["sizes"],
        })  # fmt: skip
    if store:
        store.clear()  # this run is complete: nothing to resume


if __name__ == "__main__":
    stage.run(main)
