"""Reports of run directories (``selfsup report``): one self-contained HTML page and markdown.

A run's report (``RUN/report/report.html`` + ``summary.md`` + the PNGs) shows its training
curves, throughput, results, the layer-wise chart when ``selfsup eval layers`` drew one, the
resolved config and environment and, given an :class:`Inspection` of its encoder (computed
by :mod:`selfsup.explore`), the 2-D map of its embeddings, nearest-neighbour retrievals and
the linear probe's confusion matrix. Several runs give one comparison page.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .. import figures
from ..engine.metrics import read_rows
from ..errors import SelfsupError
from ..eval.evaluator import ABOUT
from ..tables import human
from .document import Document
from .runs import RUN_COLUMNS, RunRecord, find_runs, read_run, runs_table, whole_checkpoint

__all__ = ["Inspection", "RunRecord", "check_reportable", "find_runs", "image_grid", "read_run", "runs_table",
           "whole_checkpoint", "write_comparison", "write_report"]


@dataclass
class Inspection:
    """What looking at an encoder's features shows (computed above this layer, drawn here)."""

    encoder: str
    """The evaluated encoder's name (as in ``eval/results.json``)."""
    classes: list[str]
    map_method: str
    """"UMAP" or "t-SNE"."""
    coords: np.ndarray
    """(N, 2) map coordinates of N test images."""
    labels: np.ndarray
    queries: np.ndarray
    """(Q, C, H, W) uint8 test images."""
    query_labels: np.ndarray
    neighbours: np.ndarray
    """(Q, K, C, H, W) uint8: the K training images nearest each query."""
    neighbour_labels: np.ndarray
    similarities: np.ndarray
    """(Q, K) cosine similarities."""
    confusion: np.ndarray | None
    """Linear probe on the test split: rows true class, columns predicted (None: not probed)."""
    linear_top1: float | None
    """Top-1 (%) of what drew the confusion matrix."""
    retrieval_top1: float
    """% of the queries' first neighbours of the query's class."""
    confusion_source: str = "Linear probe on the test split"
    """What predicted the confusion matrix: a linear probe, or a classifier run's own head."""


def _curve_series(run: RunRecord, stream: str, key: str, x: str) -> tuple[list[float], list[float], str] | None:
    rows = [r for r in read_rows(run.path, stream) if key in r and x in r]
    return ([r[x] for r in rows], [r[key] for r in rows], run.name) if rows else None


def _plot_curves(out: Path, runs: list[RunRecord], doc: Document) -> None:
    """Loss, kNN monitor and throughput curves (overlaid when there are several runs)."""
    plots = (("loss.png", "step", "loss", "step", "training loss", "Training loss"),
             ("knn.png", "epoch", "knn_top1", "epoch", "kNN top-1 (%)", "kNN monitor (queries never trained on)"),
             ("probe.png", "epoch", "probe_top1", "epoch", "online probe top-1 (%)",
              "Online linear probe (queries never trained on)"),
             ("test.png", "epoch", "test_top1", "epoch", "test top-1 (%)", "Test accuracy per epoch"),
             ("throughput.png", "step", "img_per_s", "step", "images / s", "Training throughput"))
    for name, stream, key, x, ylabel, title in plots:
        series = [s for s in (_curve_series(run, stream, key, x) for run in runs) if s is not None]
        if series:
            doc.figure(figures.curves(out / name, series, x, ylabel, title), title)


def _environment(run: RunRecord) -> str:
    meta = run.meta
    if not meta:
        return "no meta.json in this run directory"
    lines = [f"date: {meta.get('date')}", f"host: {meta.get('host')}",
             f"device: {meta.get('device')} x {meta.get('world_size')}, precision {meta.get('precision')}",
             f"git revision: {meta.get('git_revision')}", f"command: {' '.join(meta.get('command', []))}"]
    lines += [f"{name}: {version}" for name, version in (meta.get("versions") or {}).items()]
    return "\n".join(lines)


def _facts(run: RunRecord) -> list[str]:
    facts = [f"status: {run.status}", f"method: {run.method}, data: {run.data}, backbone: {run.backbone}",
             f"steps: {run.steps if run.steps is not None else '-'}, epochs: {run.epochs}"]
    if run.summary.get("train_minutes") is not None:
        facts.append(f"trained {human(run.summary['train_minutes'])} min at {human(run.summary.get('img_per_s'))} "
                     f"img/s; best {run.summary.get('best_metric')} = {human(run.summary.get('best'))}")
    monitor, criterion = run.meta.get("monitor"), (run.meta.get("best_by") or {}).get("metric")
    if monitor and "bank_images" in monitor:
        chooses = " (chooses best.pt)" if criterion in (None, "knn_top1") else ""
        facts.append(f"kNN monitor{chooses}: {monitor['query_images']} queries from {monitor['queries']}, "
                     f"bank of {monitor['bank_images']} training images")
    if run.meta.get("online_probe") and monitor:
        chooses = " (chooses best.pt)" if criterion == "probe_top1" else ""
        facts.append(f"online linear probe{chooses}: trained on {100 * run.meta['online_probe']['fraction']:g}% of "
                     f"each batch, top-1 on {monitor['query_images']} queries from {monitor['queries']}")
    if criterion == "loss":
        facts.append("best.pt: the epoch with the lowest mean loss (no monitor ran)")
    budget = run.meta.get("budget")
    if budget:
        facts.append(f"time budget {budget['minutes']:.3g} min: {budget['steps']} steps ({budget['epochs']:.2f} epochs) "
                     f"at {budget['seconds_per_step']:.3g} s/step measured")
    if run.status == "resumable":
        facts.append("not finished: continue it with the same command and --resume")
    elif run.status == "interrupted":
        facts.append("interrupted before a usable checkpoint was written: it has to start again")
    return facts


def _inspection_section(out: Path, inspection: Inspection, doc: Document) -> None:
    doc.heading("Embeddings")
    doc.figure(figures.embedding_map(out / "embedding_map.png", inspection.coords, inspection.labels,
                                     inspection.classes, f"{inspection.map_method} of {len(inspection.labels)} "
                                     f"test images ({inspection.encoder})"),
               f"{inspection.map_method} map of the encoder's features on test images, coloured by class")
    doc.figure(figures.retrieval_grid(out / "retrievals.png", inspection.queries, inspection.query_labels,
                                      inspection.neighbours, inspection.neighbour_labels, inspection.similarities,
                                      inspection.classes),
               f"Nearest-neighbour retrievals: the first neighbour has the query's class for "
               f"{inspection.retrieval_top1:.0f}% of the {len(inspection.query_labels)} queries")
    if inspection.confusion is not None:
        title = inspection.confusion_source + (
            f": top-1 {inspection.linear_top1:.2f}%" if inspection.linear_top1 is not None else "")
        doc.figure(figures.confusion_matrix(out / "confusion.png", inspection.confusion, inspection.classes, title),
                   f"Confusion matrix: {inspection.confusion_source.lower()} (rows: true class, % of the row)")


def check_reportable(run: RunRecord) -> None:
    if not (run.path / "metrics.jsonl").is_file():
        raise SelfsupError(f"{run.path} holds no metrics.jsonl: the run wrote no step yet (or it is a `selfsup "
                           "import` folder), nothing to report; evaluate it with selfsup eval instead")


def _evaluation_rows(results: dict) -> list[dict]:
    return [{"features": name, "protocol": protocol, "top-1 (%)": result.get("top1"),
             "settings": result.get("settings", "")}
            for name, protocols in results.items() if isinstance(protocols, dict)
            for protocol, result in protocols.items() if isinstance(result, dict) and protocol != ABOUT]


EVALUATION_COLUMNS = ["features", "protocol", "top-1 (%)", "settings"]


def write_report(run_dir: str | Path | RunRecord, inspection: Inspection | None = None,
                 notes: list[str] = ()) -> Path:
    """Write ``RUN/report/report.html``, ``summary.md`` and their PNGs; return the summary's path.

    ``notes`` are shown at the top (why a part is missing, e.g. no usable checkpoint to inspect)."""
    run = run_dir if isinstance(run_dir, RunRecord) else read_run(run_dir)
    check_reportable(run)
    out = run.path / "report"
    out.mkdir(exist_ok=True)
    doc = Document(f"Run {run.path.name}")
    for note in notes:
        doc.note(note)
    doc.bullets(_facts(run))
    doc.heading("Training")
    _plot_curves(out, [run], doc)
    epochs = read_rows(run.path, "epoch")
    if epochs:
        columns = [c for c in ("epoch", "loss", "knn_top1", "probe_top1", "test_top1", "minutes")
                   if any(c in r for r in epochs)]
        doc.table([{c: r.get(c) for c in columns} for r in epochs], columns)
    if run.results:
        doc.heading("Evaluation")
        doc.paragraph("From eval/results.json (selfsup eval):")
        doc.table(_evaluation_rows(run.results), EVALUATION_COLUMNS)
    if inspection is not None:
        _inspection_section(out, inspection, doc)
    layers = run.path / "eval" / "layers.png"
    if layers.is_file():
        doc.heading("Layer-wise linear probe")
        doc.figure(layers, "Linear probe on pooled features of each stage (selfsup eval layers)")
    doc.heading("Configuration and environment")
    if run.config:
        doc.code("Resolved config (config.yaml)", yaml.safe_dump(run.config, sort_keys=False))
    if isinstance(run.meta.get("settings"), dict):
        doc.code("How it was trained (settings.yaml)", yaml.safe_dump(run.meta["settings"], sort_keys=False))
    doc.code("Environment (meta.json)", _environment(run))
    summary = out / "summary.md"
    doc.write(out / "report.html", summary)
    return summary


def write_comparison(run_dirs: list[str | Path | RunRecord], out_dir: str | Path) -> Path:
    """One page comparing runs: a results table and overlaid curves; return the HTML's path."""
    runs = [copy.copy(run) if isinstance(run, RunRecord) else read_run(run) for run in run_dirs]
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # same folder name in different places: tell them apart by parent
        for run in runs:
            run.name = f"{run.path.parent.name}/{run.path.name}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = Document(f"Comparison of {len(runs)} runs")
    doc.heading("Results")
    doc.table([run.row() for run in runs], RUN_COLUMNS)
    scores = {"kNN": [run.knn for run in runs], "linear": [run.linear for run in runs],
              "test top-1": [run.test_top1 for run in runs]}
    scores = {label: values for label, values in scores.items() if any(v is not None for v in values)}
    if scores:
        doc.figure(figures.grouped_bars(out / "results.png", [run.name for run in runs], scores, "top-1 (%)",
                                        "Results"), "Top-1 of each run (%)")
    doc.paragraph("kNN and linear: top-1 (%) of each run's own latest evaluated checkpoint in its eval/results.json "
                  "(the kNN monitor's best when it was not evaluated); test top-1: a classifier's own accuracy.")
    doc.heading("Curves")
    _plot_curves(out, runs, doc)
    detail = [run for run in runs if run.results]
    if detail:
        doc.heading("Every evaluation")
        for run in detail:
            doc.paragraph(run.name)
            doc.table(_evaluation_rows(run.results), EVALUATION_COLUMNS)
    reports = [(run, run.path / "report" / "report.html") for run in runs]
    if any(page.is_file() for _, page in reports):
        doc.heading("Each run's report")
        for run, page in reports:
            if page.is_file():
                doc.link(run.name, page)
    doc.heading("Configurations")
    for run in runs:
        doc.code(f"{run.name}: config", yaml.safe_dump(run.config, sort_keys=False) if run.config else "(none)")
    html_path = out / "comparison.html"
    doc.write(html_path, out / "comparison.md")
    (out / "comparison.json").write_text(json.dumps([{**run.row(), "path": str(run.path)} for run in runs],
                                                    indent=2) + "\n")
    return html_path


def image_grid(dataset, path: str | Path, per_class: int = 8) -> None:  # noqa: ANN001 - ImageDataset
    """A PNG with ``per_class`` sample images of every class (one row each; 10 rows at most)."""
    if dataset.labeled:
        rows = [(str(name), (dataset.targets == label).nonzero().squeeze(1)[:per_class].tolist())
                for label, name in enumerate(dataset.classes[:10])]
    else:
        rows = [("unlabeled", list(range(min(per_class, len(dataset)))))]
    figures.image_grid(Path(path), dataset.images.permute(0, 2, 3, 1).numpy(), rows, per_class)
