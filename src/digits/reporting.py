"""The run report as one document rendered twice: Markdown (figures linked) and self-contained HTML (figures
embedded as data URIs). Also the baseline (metrics committed at a git revision) and the historical MNIST results.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# (method, test accuracy, source): the classic reference points on the same 10,000-image MNIST test set
HISTORICAL = (
    ("Linear classifier (1-layer NN)", 0.880, "LeCun, Bottou, Bengio & Haffner 1998, Proc. IEEE"),
    ("2-layer NN, 300 hidden units", 0.953, "LeCun, Bottou, Bengio & Haffner 1998, Proc. IEEE"),
    ("Single CNN, GPU, deformations", 0.9965, "Cireșan, Meier, Masci, Gambardella & Schmidhuber 2011, IJCAI"),
    ("Committee of 35 CNNs (MCDNN)", 0.9977, "Cireșan, Meier & Schmidhuber 2012, CVPR (arXiv:1202.2745)"),
)


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[object]]


@dataclass(frozen=True)
class Figure:
    caption: str
    path: Path


Block = str | Table | Figure  # a str is a paragraph (inline `code` and **bold** allowed)


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


def markdown(title: str, sections: list[Section], out: Path) -> str:
    """Markdown with figures linked relative to ``out``."""

    def block(b: Block) -> str:
        if isinstance(b, Table):
            rows = [[str(c).replace("|", "\\|") for c in row] for row in [b.header, *b.rows]]
            lines = ["| " + " | ".join(row) + " |" for row in rows]
            return "\n".join([lines[0], "|" + "---|" * len(b.header), *lines[1:]])
        if isinstance(b, Figure):
            return f"![{b.caption}]({Path(os.path.relpath(b.path, out.parent)).as_posix()})"
        return b

    parts = [f"# {title}"]
    for s in sections:
        parts += [f"## {s.title}", *map(block, s.blocks)]
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2em}img{max-width:100%}figure{margin:1em 0}
figcaption{color:#555;font-size:.9em}"""


def html_page(title: str, sections: list[Section]) -> str:
    """One HTML file with every figure embedded (base64 PNG), readable offline and as an MLflow artifact."""

    def block(b: Block) -> str:
        if isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            head = f"<thead><tr>{head}</tr></thead>" if any(b.header) else ""  # Markdown needs one; HTML does not
            body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b.rows)
            return f"<table>{head}<tbody>{body}</tbody></table>"
        if isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode()
            caption = html.escape(b.caption)
            img = f'<img alt="{caption}" src="data:image/png;base64,{data}">'
            return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"
        return f"<p>{_inline(b)}</p>"

    body = [f"<h1>{_inline(title)}</h1>"]
    for s in sections:
        body += [f"<h2>{_inline(s.title)}</h2>", *map(block, s.blocks)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def committed_json(rev: str, path: Path) -> dict | None:
    """``path`` (relative to the working directory) as committed at git revision ``rev``; None if git, the
    revision or the file is not there."""
    try:
        proc = subprocess.run(["git", "show", f"{rev}:./{path.as_posix()}"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return None


# (label, source file, key path, format) of the numbers compared with the baseline
COMPARED = (
    ("test accuracy", "evaluate", ("test_accuracy",), "pct"),
    ("test errors", "evaluate", ("test_errors",), "int"),
    ("top-2 accuracy", "evaluate", ("test_top2_accuracy",), "pct"),
    ("test loss", "evaluate", ("test_loss",), ".4f"),
    ("macro F1", "evaluate", ("macro_avg", "f1-score"), ".4f"),
    ("expected calibration error", "evaluate", ("test_ece",), ".4f"),
    ("mean accuracy under perturbations", "evaluate", ("robustness_mean",), "pct"),
    ("mean accuracy under MNIST-C-style corruptions", "evaluate", ("corruption_mean",), "pct"),
    ("held-out font digits", "evaluate", ("ood_font_accuracy",), "pct"),
    ("parameters", "train", ("n_parameters",), "int"),
    ("epochs run", "train", ("epochs_run",), "int"),
    ("training time (s)", "train", ("train_seconds",), ".1f"),
    ("inference (images/s)", "evaluate", ("inference_images_per_second",), "int"),
)


def lookup(d: dict | None, keys: tuple[str, ...]) -> float | None:
    """The number at ``keys`` in nested dicts ``d``; None where a key is missing or the value is not a number."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, int | float) and not isinstance(d, bool) else None


def format_value(v: float | None, fmt: str, signed: bool = False) -> str:
    """``v`` in one of COMPARED's formats ("pct", "int" or a format spec); "—" for None."""
    if v is None:
        return "—"
    sign = "+" if signed else ""
    if fmt == "pct":
        return f"{v * 100:{sign}.2f} pp" if signed else f"{v:.2%}"
    return f"{v:{sign},d}" if fmt == "int" else f"{v:{sign}{fmt}}"


def comparison(current: dict[str, dict], baseline: dict[str, dict | None]) -> Table:
    """Baseline vs this run for each of COMPARED (``current``/``baseline`` keyed by "evaluate"/"train")."""
    rows = []
    for label, source, keys, fmt in COMPARED:
        now, before = lookup(current[source], keys), lookup(baseline[source], keys)
        change = None if now is None or before is None else now - before
        rows.append([label, format_value(before, fmt), format_value(now, fmt), format_value(change, fmt, signed=True)])
    return Table(["metric", "baseline", "this run", "change"], rows)


def zoo(rows: list[dict[str, str]]) -> Table:
    """The model-zoo table (docs/zoo.csv rows), test accuracy as a percentage."""
    header = ["model", "description", "parameters", "epochs_run", "train_seconds", "machine", "test_accuracy",
              "notebook_claim"]  # fmt: skip

    def cell(row: dict[str, str], key: str) -> str:
        value = row.get(key) or "—"
        if key == "test_accuracy" and value != "—":
            try:
                return f"{float(value):.2%}"
            except ValueError:
                return value
        return value

    return Table(header, [[cell(r, k) for k in header] for r in rows])


# (label, evaluate.json key, docs/robustness.csv column) of the robustness figures compared with the recipes
ROBUSTNESS_COMPARED = (
    ("clean test accuracy", "test_accuracy", "test_accuracy"),
    ("perturbation sweep: mean", "robustness_mean", "test_perturbation_mean"),
    ("perturbation sweep: worst condition", None, "test_perturbation_min"),
    ("MNIST-C-style corruptions: mean", "corruption_mean", "test_corruption_mean"),
    ("MNIST-C-style, like no augmentation: mean", "corruption_mean_unseen", "test_corruption_mean_unseen"),
    ("held-out font digits", "ood_font_accuracy", "heldout_font_accuracy"),
)


def robustness_comparison(ev: dict, recipes: list[dict[str, str]]) -> Table:
    """This run's robustness next to each recipe's mean over seeds (docs/robustness.csv rows)."""
    worst = min(ev["robustness"].values())
    header = ["metric", "this run"] + [f"{r['recipe']} (mean of {r['runs']})" for r in recipes]
    rows = [
        [label, f"{(ev[key] if key else worst):.2%}"] + [f"{float(r[column]):.2%}" for r in recipes]
        for label, key, column in ROBUSTNESS_COMPARED
    ]
    return Table(header, rows)


def sections(
    run: dict,
    train: dict,
    ev: dict,
    details: dict,
    figs: dict[str, Path],
    baseline: dict,
    baseline_rev: str,
    zoo_rows: list[dict] | None,
    zoo_path: Path,
    recipe_rows: list[dict] | None = None,
) -> list[Section]:
    """The report: identity, headline metrics, change from the baseline, per-class table, error analysis,
    calibration, robustness and out-of-distribution digits (next to ``recipe_rows``, docs/robustness.csv),
    training, data, historical results and the model zoo."""
    tags, pct = run["tags"], lambda v: f"{v:.2%}"
    identity = [
        ["MLflow run", f"`{run['run_id']}` (experiment {run['experiment_id']})"],
        *([["evaluated in MLflow run", f"`{run['evaluation_run_id']}` (nested under the one above)"]]
          if run.get("evaluation_run_id", run["run_id"]) != run["run_id"] else []),
        ["git commit", f"`{tags.get('git_commit', 'unknown')}`" + (" (dirty)" * (tags.get("git_dirty") == "true"))],
        ["DVC experiment", tags.get("dvc_exp_name", "— (workspace run)")],
        ["device", run["device"]],
        ["data sizes", ", ".join(f"{k} {v}" for k, v in run["data_sizes"].items())],
        *[[f"MD5 {name}", f"`{md5}`"] for name, md5 in run["data_md5"].items()],
        [
            "training time",
            f"{train['train_seconds']:.1f} s, {train['epochs_run']} epochs "
            f"({train['train_images_per_second']:,} images/s)",
        ],
        ["inference", f"{ev['inference_images_per_second']:,} images/s (median over the robustness passes)"],
        ["robustness evaluation", f"{ev['robustness_seconds']:.1f} s for {len(ev['robustness'])} perturbations and "
                                  f"{len(ev['corruption'])} corruptions"],  # fmt: skip
    ]
    headline = [
        ["test accuracy", pct(ev["test_accuracy"])],
        ["test errors", f"{ev['test_errors']} of {run['data_sizes']['test']}"],
        ["top-2 accuracy", pct(ev["test_top2_accuracy"])],
        ["test loss", f"{ev['test_loss']:.4f}"],
        *[
            [f"{avg.split('_')[0]} {k.replace('f1-score', 'F1')}", f"{ev[avg][k]:.4f}"]
            for avg in ("macro_avg", "weighted_avg")
            for k in ("precision", "recall", "f1-score")
        ],
        ["expected calibration error", f"{ev['test_ece']:.4f}"],
        ["mean accuracy under perturbations", pct(ev["robustness_mean"])],
        ["mean accuracy under MNIST-C-style corruptions", pct(ev["corruption_mean"])],
        ["held-out font digits (out of distribution)", pct(ev["ood_font_accuracy"])],
        [
            "save/load check",
            "identical predictions (MLflow model, checkpoint, in-memory); max abs logit difference "
            f"{max(v for k, v in ev.items() if k.startswith('save_load_max')):.2g}",
        ],
        ["best epoch (by validation accuracy)", f"{train['best_epoch']} of {train['epochs_run']}"],
        ["validation accuracy", pct(train["val_accuracy"])],
        ["parameters", f"{train['n_parameters']:,}"],
    ]
    if baseline["evaluate"] is None:
        change = [
            f"No baseline: no metrics committed at `{baseline_rev}` (no git repository, revision or "
            "committed `metrics/evaluate.json`)."
        ]
    else:
        change = [
            f"Baseline: the metrics committed at `{baseline_rev}`.",
            comparison({"evaluate": ev, "train": train}, baseline),
        ]
    per_class = [
        [
            d,
            pct(c["accuracy"]),
            f"{c['precision']:.4f}",
            f"{c['recall']:.4f}",
            f"{c['f1-score']:.4f}",
            int(c["support"]),
        ]
        for d, c in details["per_class"].items()
    ]
    support = {d: c["support"] for d, c in details["per_class"].items()}
    confused = [
        [c["actual"], c["predicted"], c["count"], pct(c["count"] / support[str(c["actual"])])]
        for c in details["most_confused"]
    ]
    errors = [
        [e["index"], e["actual"], e["predicted"], f"{e['p_predicted']:.3f}", f"{e['p_actual']:.3f}", f"{e['gap']:.3f}"]
        for e in details["misclassified"][:10]
    ]
    clean = details["robustness"][0]["accuracy"]
    robust = [
        [r["condition"], pct(r["accuracy"]), f"{(r['accuracy'] - clean) * 100:+.2f} pp"] for r in details["robustness"]
    ]
    corrupted = [[r["corruption"].replace("_", " "), pct(r["accuracy"]), f"{(r['accuracy'] - clean) * 100:+.2f} pp",
                  details["corruption_counterparts"].get(r["corruption"], "")]
                 for r in details["corruptions"]]  # fmt: skip
    font_rows = [[f, v["images"], v["errors"], pct(v["accuracy"])] for f, v in details["ood_fonts"].items()
                 if v["accuracy"] is not None]  # fmt: skip
    history = [[m, pct(a), src] for m, a, src in HISTORICAL] + [
        ["**this run**", f"**{pct(ev['test_accuracy'])}**", "this report"]
    ]
    fig = {name: Figure(name.replace("_", " "), path) for name, path in figs.items()}
    return [
        Section("Run identity", [Table(["", ""], identity)]),
        Section("Headline metrics", [Table(["metric", "value"], headline)]),
        Section("What changed", change),
        Section(
            "Per-class metrics (test set)",
            [Table(["digit", "accuracy", "precision", "recall", "F1", "support"], per_class)],
        ),
        Section(
            "Confusion matrix and most confused pairs",
            [
                Table(["actual", "predicted", "count", "share of actual"], confused or [["—", "—", 0, "—"]]),
                fig["confusion_matrix"],
            ],
        ),
        Section(
            "Misclassified digits",
            [
                "Ranked by confidence gap: p(predicted class) − p(true class); the most confidently wrong first.",
                Table(["test index", "true", "predicted", "p(predicted)", "p(true)", "gap"], errors or [["—"] * 6]),
                fig["misclassified"],
                fig["predictions"],
            ],
        ),
        Section(
            "Calibration",
            [
                f"Expected calibration error (ECE) **{ev['test_ece']:.4f}** over "
                f"{len(details['calibration_bins'])} equal-width confidence bins.",
                fig["reliability"],
            ],
        ),
        Section(
            "Robustness and out-of-distribution",
            [
                "Accuracy on what MNIST's test set does not contain, for this run and, where recorded, for the "
                "clean-only and the robust recipe (means over seeds, `docs/robustness.csv`).",
                *([robustness_comparison(ev, recipe_rows)] if recipe_rows else []),
                "**Perturbation sweep:** every test image perturbed at growing strengths (seeded, computed on the "
                "fly).",
                Table(["condition", "accuracy", "vs clean"], robust),
                fig["robustness"],
                "**MNIST-C-style corruptions** (after Mu & Gilmer 2019; one severity each). A training augmentation "
                f"resembles some of them: the mean over the others is **{pct(ev['corruption_mean_unseen'])}**.",
                Table(["corruption", "accuracy", "vs clean", "a training augmentation like it"], corrupted),
                fig["corruptions"],
                f"**Font digits:** {pct(ev['ood_font_accuracy'])} of the held-out font families' digits (the render "
                "stage; no MNIST writer made them, and no choice was made on these families).",
                Table(["font family", "images", "errors", "accuracy"], font_rows),
                fig["font_errors"],
            ],
        ),
        Section(
            "Training",
            [fig["training_curves"], Table(["param", "value"], [[k, f"`{v}`"] for k, v in run["params"].items()])],
        ),
        Section("Data", [fig["class_distribution"], fig["samples"]]),
        Section("Comparison with historical MNIST results", [Table(["method", "test accuracy", "source"], history)]),
        Section("Model zoo", [zoo(zoo_rows)] if zoo_rows else [f"No model-zoo table (`{zoo_path}` not found)."]),
    ]
