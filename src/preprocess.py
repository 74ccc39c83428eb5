"""Stage preprocess: IDX files → uint8/int64 tensors with a seeded, stratified train/validation split.

Writes train.pt, val.pt, test.pt and stats.json (normalisation statistics of the training split, class
counts, MD5s of the raw files) to OUT_DIR, and the class-distribution and sample-grid figures to FIG_DIR.
"""

from pathlib import Path

from digits import data, figures, files, params, stage

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def main() -> None:
    ap = stage.parser(__doc__)
    ap.add_argument("raw_dir")
    ap.add_argument("out_dir")
    ap.add_argument("fig_dir")
    args = ap.parse_args()
    p = params.load(args.params).preprocess
    raw, out, fig = Path(args.raw_dir), Path(args.out_dir), Path(args.fig_dir)

    full_train = data.read_idx_pair(raw / RAW_FILES[0], raw / RAW_FILES[1])
    test = data.read_idx_pair(raw / RAW_FILES[2], raw / RAW_FILES[3])
    full_train = data.subset(full_train, p.train_limit, p.seed)
    test = data.subset(test, p.test_limit, p.seed)
    train_idx, val_idx = data.stratified_indices(full_train.labels.numpy(), p.val_fraction, p.seed)
    splits = {
        "train": data.Split(full_train.images[train_idx], full_train.labels[train_idx]),
        "val": data.Split(full_train.images[val_idx], full_train.labels[val_idx]),
        "test": test,
    }
    empty = [name for name, split in splits.items() if len(split) == 0]
    if empty:
        raise data.DataError(f"the {' and '.join(empty)} split would be empty: raise preprocess.train_limit / "
                             f"test_limit or preprocess.val_fraction")  # fmt: skip
    pixels = splits["train"].images.float().div_(255.0)
    stats = {
        "mean": pixels.mean().item(),
        "std": pixels.std().item(),
        "sizes": {name: len(s) for name, s in splits.items()},
        "class_counts": {name: s.labels.bincount(minlength=10).tolist() for name, s in splits.items()},
        "raw_md5": {name: files.md5_file(raw / name) for name in RAW_FILES},
    }
    for name, split in splits.items():
        data.save_split(out / f"{name}.pt", split)
    files.write_json(out / "stats.json", stats)
    figures.class_distribution(stats["class_counts"], fig / "class_distribution.png")
    figures.sample_grid(splits["train"].images.numpy(), splits["train"].labels.numpy(), fig / "samples.png")
    print(f"split sizes {stats['sizes']}; train mean {stats['mean']:.4f} std {stats['std']:.4f}")


if __name__ == "__main__":
    stage.run(main)
