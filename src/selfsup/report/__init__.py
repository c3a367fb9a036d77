"""Plots and a markdown summary of a run directory (``selfsup report RUN_DIR``)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from ..engine.metrics import read_rows  # noqa: E402
from ..errors import SelfsupError  # noqa: E402
from ..eval import markdown_table, results_table  # noqa: E402


def _plot(path: Path, series: list[tuple[list[float], list[float], str]], xlabel: str, ylabel: str,
          title: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=120)
    for xs, ys, label in series:
        axis.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report/loss.png``, ``report/knn.png`` and ``report/summary.md``; return the summary path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise SelfsupError(f"{run_dir} holds no metrics.jsonl: not a run directory (or the run wrote no step yet)")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    steps, epochs = read_rows(run_dir, "step"), read_rows(run_dir, "epoch")
    if steps:
        _plot(out / "loss.png", [([r["step"] for r in steps], [r["loss"] for r in steps], "loss")],
              "step", "training loss", "Training loss")
    monitored = [r for r in epochs if "knn_top1" in r]
    if monitored:
        _plot(out / "knn.png", [([r["epoch"] for r in monitored], [r["knn_top1"] for r in monitored], "kNN")],
              "epoch", "kNN top-1 (%)", "kNN monitor (queries never trained on)")
    lines = [f"# Run {run_dir.name}", ""]
    meta_path = run_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        lines += [f"- date: {meta.get('date')}", f"- git revision: {meta.get('git_revision')}",
                  f"- device: {meta.get('device')} x {meta.get('world_size')}, precision {meta.get('precision')}",
                  f"- command: `{' '.join(meta.get('command', []))}`"]
        if meta.get("monitor"):
            monitor = meta["monitor"]
            lines.append(f"- kNN monitor (chooses best.pt): {monitor['query_images']} queries from "
                         f"{monitor['queries']}, bank of {monitor['bank_images']} training images")
        if meta.get("budget"):
            budget = meta["budget"]
            lines.append(f"- time budget {budget['minutes']} min: {budget['steps']} steps "
                         f"({budget['epochs']} epochs) at {budget['seconds_per_step']} s/step measured")
        lines.append("")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        lines += [f"Trained {summary['steps']} steps in {summary['train_minutes']} min "
                  f"({summary['img_per_s']} img/s); best {summary['best_metric']} = {summary['best']}.", ""]
    if epochs:
        columns = ["epoch", "loss"] + (["knn_top1"] if monitored else []) + ["minutes"]
        lines += ["## Epochs", "", markdown_table(epochs, columns), ""]
    results_path = run_dir / "eval" / "results.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        lines += ["## Evaluation", "", results_table(results), ""]
    for name, caption in (("loss.png", "Training loss"), ("knn.png", "kNN monitor")):
        if (out / name).is_file():
            lines += [f"![{caption}]({name})", ""]
    lines += ["Full configuration: [config.yaml](../config.yaml)", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def image_grid(dataset, path: str | Path, per_class: int = 8) -> None:  # noqa: ANN001 - ImageDataset
    """A PNG with ``per_class`` sample images of every class (one row each; 10 rows at most)."""
    classes = dataset.classes[:10] if dataset.labeled else ["unlabeled"]
    figure, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95),
                                squeeze=False)
    for row, name in enumerate(classes):
        members = (dataset.targets == row).nonzero().squeeze(1) if dataset.labeled else \
            range(len(dataset))
        for col in range(per_class):
            axis = axes[row][col]
            axis.axis("off")
            if col < len(members):
                image = dataset.images[int(members[col])].permute(1, 2, 0).numpy()
                axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        axes[row][0].set_title(str(name), fontsize=7, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
