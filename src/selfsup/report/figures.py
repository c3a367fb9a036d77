"""The figures of reports and searches, each written to a PNG file (matplotlib, no display)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Series = tuple[Sequence[float], Sequence[float], str]
MATCH, MISMATCH = "#2e9d4b", "#d23c3c"


def curves(path: Path, series: list[Series], xlabel: str, ylabel: str, title: str) -> Path:
    """Line plot of one or more (xs, ys, label) series (a legend when there are several)."""
    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for xs, ys, label in series:
        axis.plot(list(xs), list(ys), marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend(fontsize=8)
    return _save(figure, path)


def grouped_bars(path: Path, names: list[str], groups: dict[str, list[float | None]], ylabel: str, title: str) -> Path:
    """One group of bars per name, one bar per series (a missing value leaves a gap), values written on top."""
    figure, axis = plt.subplots(figsize=(min(14.0, max(5.0, 0.9 * len(names) * max(len(groups), 1) + 1.5)), 3.8),
                                dpi=110)
    width = 0.8 / max(len(groups), 1)
    for offset, (label, values) in enumerate(groups.items()):
        xs = [i + (offset - (len(groups) - 1) / 2) * width for i in range(len(names))]
        shown = [(x, v) for x, v in zip(xs, values) if v is not None]
        if shown:
            bars = axis.bar([x for x, _ in shown], [v for _, v in shown], width, label=label)
            axis.bar_label(bars, fmt="%.1f", fontsize=7)
    axis.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4
                    else "center", fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    return _save(figure, path)


def _show(axis, image: np.ndarray) -> None:  # noqa: ANN001 - matplotlib axis
    """One uint8 (C, H, W) image, gray or RGB, without ticks."""
    picture = np.asarray(image).transpose(1, 2, 0)
    axis.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255)
    axis.set_xticks([])
    axis.set_yticks([])


def _frame(axis, colour: str) -> None:  # noqa: ANN001
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.5)


def embedding_map(path: Path, coords: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> Path:
    """A 2-D map of embeddings (t-SNE/UMAP coordinates), one colour per class."""
    figure, axis = plt.subplots(figsize=(7.2, 6.0), dpi=110)
    palette = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        chosen = labels == index
        if chosen.any():
            axis.scatter(coords[chosen, 0], coords[chosen, 1], s=7, alpha=0.75, color=palette(index % palette.N),
                         label=str(name))
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title)
    if len(classes) <= 20:
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2.5, frameon=False)
    return _save(figure, path)


def retrieval_grid(path: Path, queries: np.ndarray, query_labels: np.ndarray, neighbours: np.ndarray,
                   neighbour_labels: np.ndarray, similarities: np.ndarray, classes: list[str]) -> Path:
    """One row per query: the query, then its nearest neighbours framed green (same class) or red."""
    rows, k = neighbour_labels.shape
    figure, axes = plt.subplots(rows, k + 1, figsize=(1.15 * (k + 1), 1.3 * rows), dpi=110, squeeze=False)
    for row in range(rows):
        _show(axes[row][0], queries[row])
        axes[row][0].set_title(f"query: {classes[int(query_labels[row])]}", fontsize=6)
        _frame(axes[row][0], "#23407a")
        for col in range(k):
            axis = axes[row][col + 1]
            _show(axis, neighbours[row, col])
            same = neighbour_labels[row, col] == query_labels[row]
            _frame(axis, MATCH if same else MISMATCH)
            axis.set_title(f"{similarities[row, col]:.3f}", fontsize=6)
    figure.suptitle("Nearest training images by cosine similarity (green: same class)", fontsize=9)
    return _save(figure, path)


def confusion_matrix(path: Path, matrix: np.ndarray, classes: list[str], title: str) -> Path:
    """Rows: true class, columns: predicted; cells as % of the row, counts of the diagonal written."""
    matrix = np.asarray(matrix, dtype=np.float64)
    share = 100.0 * matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2.0)
    figure, axis = plt.subplots(figsize=(size + 1.2, size), dpi=110)
    shown = axis.imshow(share, cmap="Blues", vmin=0, vmax=100)
    axis.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if share[i, j] >= 1.0:
                    axis.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=6,
                              color="white" if share[i, j] > 55 else "black")
    axis.set_title(title)
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, label="% of the true class")
    return _save(figure, path)


def contact_sheet(path: Path, query: np.ndarray, images: list[np.ndarray], captions: list[str],
                  query_caption: str) -> Path:
    """The query, then its neighbours in rank order with their captions (file name, similarity)."""
    per_row = 6
    count = len(images) + 1
    rows = -(-count // per_row)
    figure, axes = plt.subplots(rows, per_row, figsize=(1.9 * per_row, 2.4 * rows), dpi=100, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    tiles = [(query, query_caption, "#23407a")] + [(image, caption, "#888888")
                                                    for image, caption in zip(images, captions)]
    for axis, (image, caption, colour) in zip(axes.flat, tiles):
        axis.axis("on")
        _show(axis, image)
        _frame(axis, colour)
        axis.set_title(caption, fontsize=7)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:  # noqa: ANN001
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
