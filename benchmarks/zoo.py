"""The model-zoo table: each `train.zoo` model's latest full-data run in the MLflow store and its notebook's claim.

Run the zoo first (README, "Model zoo": one queued `dvc exp run -S train.model=...` per model, `dvc queue start -j 1`),
then:

    python benchmarks/zoo.py   # prints the Markdown table, writes docs/zoo.csv (read by the report stage)

Only runs on the whole training split count (a small-data smoke run is not a result); the newest such run of each
model wins. A model with no such run is listed as "not run".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import yaml

from digits import augmentations, files, tracking

# What each seed notebook said its model reaches (the notebooks' own words).
NOTEBOOK_CLAIMS = {
    "mlp_128_128": "high 90s",
    "mlp_512_512": "97–98 %",
    "mlp_128_64": "97–98 %",
    "mlp_512_256_128": "97–98 %",
    "mlp_bn_1024_512_256_128": "98–99 %",
    "cnn_32_64_keras": "> 95 %",
}
FULL_TRAIN_SPLIT = 54_000  # 60k training images less the 10 % validation split


def describe(p: dict[str, str]) -> str:
    """A one-line architecture + recipe summary from a run's logged train params."""
    if p["arch"] == "mlp":
        arch = "MLP " + "-".join(map(str, yaml.safe_load(p["hidden"])))
        arch += " + BN" * (p["batchnorm"] == "True")
    else:
        arch = f"CNN {p['stages']}×stage w{p['width']}" + " (stride-2 first conv)" * (p.get("first_stride") == "2")
        arch += f" + dense {p['head']}" if p["head"] != "0" else ""

    def used(*keys: str) -> bool:  # any of these augment params set (runs logged before a key existed lack it)
        return any(p.get(f"augment.{k}", "0") not in ("0", "0.0") for k in keys)

    aug = "aug" if used("rotation_deg", "zoom", "shift") else "no aug"
    if used("elastic_px"):
        aug += " + elastic"
    if used(*augmentations.TRANSFORMS) and used("robust_share"):
        aug += " + robustness aug"
    return f"{arch}; {p['optimizer']} {p['scheduler']}; {aug}; batch {p['batch_size']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/zoo.csv")
    args = ap.parse_args()
    zoo = yaml.safe_load(Path("params.yaml").read_text())["train"]["zoo"]
    mlflow.set_tracking_uri(tracking.tracking_uri())
    runs = mlflow.search_runs(
        [tracking.experiment_id()], filter_string="attributes.status = 'FINISHED'", order_by=["start_time DESC"],
        output_format="list",
    )  # fmt: skip
    rows = []
    for name in zoo:
        full = [r for r in runs if r.data.params.get("model") == name and "test_accuracy" in r.data.metrics
                and r.data.params.get("train_size") == str(FULL_TRAIN_SPLIT)]  # fmt: skip
        if not full:
            rows.append({"model": name, "description": "not run", "parameters": "", "epochs_run": "",
                         "train_seconds": "", "machine": "", "test_accuracy": "",
                         "notebook_claim": NOTEBOOK_CLAIMS.get(name, "—")})  # fmt: skip
            continue
        r = full[0]
        rows.append({
            "model": name,
            "description": describe(r.data.params),
            "parameters": r.data.params["n_parameters"],
            "epochs_run": int(r.data.metrics["epochs_run"]),
            "train_seconds": round(r.data.metrics["train_seconds"], 1),
            "machine": r.data.tags.get("machine", ""),  # the class train_seconds was measured on
            "test_accuracy": round(r.data.metrics["test_accuracy"], 4),
            "notebook_claim": NOTEBOOK_CLAIMS.get(name, "—"),
        })  # fmt: skip
    files.write_csv(args.out, rows)
    print("| model | description | parameters | epochs | train s | machine | test accuracy | notebook claimed |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for row in rows:
        acc = f"{row['test_accuracy']:.2%}" if row["test_accuracy"] != "" else "not run"
        print(f"| `{row['model']}` | {row['description']} | {row['parameters']} | {row['epochs_run']} | "
              f"{row['train_seconds']} | {row['machine']} | {acc} | {row['notebook_claim']} |")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
