"""Every figure selfsup draws, each written to a PNG file: the one place matplotlib is set up (no
display needed). The functions take plain numbers and arrays (no runs, no models), so that any
layer may draw: the report's curves and maps, the searches' contact sheets, the layer-wise probe,
continual learning's accuracy matrices, multi-task accuracies, a ViT's tokens, a dataset's samples."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import matplotlib.ticker  # noqa: E402
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


HORIZONTAL_FROM = 12  # from this many names on, rotated names under columns collide: one row per name


def grouped_bars(path: Path, names: list[str], groups: dict[str, list[float | None]], ylabel: str, title: str,
                 errors: dict[str, list[float | None]] | None = None, zoom: bool = False,
                 references: dict[str, float] | None = None, reference_name: str = "reference") -> Path:
    """One group of bars per name, one bar per series (a missing value leaves a gap), values written on
    top; ``errors`` (same shape, e.g. standard deviations over seeds; None where a bar has none) draws error bars; ``zoom`` starts
    the axis a few points below the lowest bar, for differences of a point or two between high values.
    ``references`` (series -> value) draws a dashed line across the chart at that value in the series'
    colour, named "``reference_name``, series" in the legend: a floor each bar can be read against.
    From :data:`HORIZONTAL_FROM` names on the bars lie horizontally, one row per name, top to bottom in
    the order given, so that long names (a benchmark's rows) stay readable."""
    references = references or {}
    unknown = set(references) - set(groups)
    if unknown:
        raise ValueError(f"references for series that are not drawn: {sorted(unknown)} (series: {list(groups)})")
    horizontal = len(names) >= HORIZONTAL_FROM
    series = max(len(groups), 1)
    figure, axis = plt.subplots(figsize=(8.0, 0.22 * len(names) * series + 1.2) if horizontal
                                else (min(14.0, max(5.0, 0.9 * len(names) * series + 1.5)), 3.8), dpi=110)
    name_axis, value_axis = (axis.yaxis, axis.xaxis) if horizontal else (axis.xaxis, axis.yaxis)
    draw, error_key = (axis.barh, "xerr") if horizontal else (axis.bar, "yerr")
    width = 0.8 / series
    for offset, (label, values) in enumerate(groups.items()):
        positions = [i + (offset - (len(groups) - 1) / 2) * width for i in range(len(names))]
        spread = (errors or {}).get(label) or [None] * len(values)
        shown = [(x, v, e) for x, v, e in zip(positions, values, spread) if v is not None]
        if shown:
            bars = draw([x for x, _, _ in shown], [v for _, v, _ in shown], width, label=label,
                        **{error_key: [math.nan if e is None else e for _, _, e in shown] if errors else None},
                        capsize=3 if errors else 0)
            axis.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
            if label in references:
                (axis.axvline if horizontal else axis.axhline)(references[label], color=bars.patches[0].get_facecolor(),
                                                               linestyle="--", linewidth=1,
                                                               label=f"{reference_name}, {label}")
    slanted = not horizontal and len(names) > 4
    name_axis.set_ticks(range(len(names)), names, rotation=30 if slanted else 0,
                        ha="right" if horizontal or slanted else "center", fontsize=8)
    if horizontal:
        axis.invert_yaxis()  # the first name on top, as in the table beside the chart
        axis.margins(x=0.08, y=0.01)  # room for the values written after the bars
    shown_values = [v for values in groups.values() for v in values if v is not None]
    if zoom and shown_values:
        (axis.set_xlim if horizontal else axis.set_ylim)(max(0.0, 5 * (min(shown_values) // 5) - 5))
    value_axis.set_label_text(ylabel)
    axis.grid(alpha=0.3, axis="x" if horizontal else "y")
    axis.legend(fontsize=8, **({"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)} if horizontal else {}))
    axis.set_title(title, fontsize=10)
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


def printable(text: str) -> str:
    """``text`` with the bytes of a file or folder name that are not UTF-8 (which Python keeps as
    surrogate escapes, and fonts and UTF-8 files cannot hold) shown as U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON, say)
        return text.encode("utf-8", "replace").decode("utf-8")


def _save(figure, path: Path) -> Path:  # noqa: ANN001
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for label in figure.findobj(matplotlib.text.Text):  # titles, captions, legends: names from disk
        label.set_text(printable(label.get_text()))
    for axis in (axis for axes in figure.axes for axis in (axes.xaxis, axes.yaxis)):  # tick labels, drawn later
        for formatter in (axis.get_major_formatter(), axis.get_minor_formatter()):
            if isinstance(formatter, matplotlib.ticker.FixedFormatter):
                formatter.seq = [printable(str(text)) for text in formatter.seq]
            elif isinstance(formatter, matplotlib.ticker.FuncFormatter):  # what set_xticks(ticks, labels) makes
                formatter.func = lambda value, pos, given=formatter.func: printable(str(given(value, pos)))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def layer_probe(path: Path, everything: dict[str, Any]) -> Path:
    """Top-1 per stage, one line per encoder: the 'is the last layer aligned?' chart
    (``everything``: ``{encoder: {"stages": {stage: {"top1": ...}}}}``)."""
    figure, axis = plt.subplots(figsize=(6, 3.8), dpi=120)
    for name, entry in everything.items():
        stages = list(entry["stages"])
        axis.plot(range(len(stages)), [entry["stages"][s]["top1"] for s in stages], marker="o", label=name)
        axis.set_xticks(range(len(stages)), stages)
    axis.set_xlabel("stage (features average-pooled to ~equal size)")
    axis.set_ylabel("linear probe top-1 (%)")
    axis.set_title("Layer-wise linear probe")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path)


def layer_probe_by_size(path: Path, everything: dict[str, Any]) -> Path:
    """One panel per encoder: top-1 per stage for each pooled size (does the verdict depend on it?)."""
    names = [n for n, entry in everything.items() if entry.get("by_dim")]
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), dpi=120, squeeze=False, sharey=True)
    for axis, name in zip(axes[0], names):
        for dim, tops in everything[name]["by_dim"].items():
            stages = list(tops)
            axis.plot(range(len(stages)), [tops[s] for s in stages], marker="o", label=f"~{dim}")
            axis.set_xticks(range(len(stages)), stages, fontsize=7)
        axis.set_title(name, fontsize=7)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("linear probe top-1 (%)")
    axes[0][-1].legend(title="features", fontsize=7, title_fontsize=7)
    return _save(figure, path)


def accuracy_matrices(path: Path, matrices: dict[str, np.ndarray], columns: int = 5) -> Path:
    """Continual learning's accuracy matrices side by side (``{title: R}``, R[i, j] the accuracy (%) on
    task j after training task i, NaN where not measured), one colour scale, the values written in."""
    columns = min(columns, len(matrices))
    rows = -(-len(matrices) // columns)
    tasks = max(len(m) for m in matrices.values())
    figure, axes = plt.subplots(rows, columns, figsize=(columns * (1.0 * tasks + 1.5) + 1, rows * (0.9 * tasks + 1.5)),
                                squeeze=False)
    image = None
    for axis, (title, values) in zip(axes.flat, matrices.items()):
        image = axis.imshow(values, vmin=0, vmax=100, cmap="viridis")
        for (i, j), value in np.ndenumerate(values):
            if value == value:
                axis.text(j, i, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black")
        axis.set_xlabel("tested on task")
        axis.set_ylabel("after training task")
        axis.set_xticks(range(len(values)))
        axis.set_yticks(range(len(values)))
        axis.set_title(title, fontsize=9)
    for axis in list(axes.flat)[len(matrices):]:
        axis.axis("off")
    figure.colorbar(image, ax=axes.ravel().tolist(), label="accuracy (%)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # tight_layout does not make room for the colour bar
    plt.close(figure)
    return path


def task_accuracies(path: Path, rows: list[dict], tasks: list[str]) -> Path:
    """One panel per task: each run's test top-1 (``rows``: ``{"run": name, "<task> top-1": value}``)
    as horizontal bars, the value written beside each."""
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        named = [(r["run"], r[f"{task} top-1"]) for r in rows if r.get(f"{task} top-1") is not None]
        axis.barh([n for n, _ in named], [v for _, v in named], color="tab:blue")
        for i, (_, value) in enumerate(named):
            axis.text(value, i, f" {value:.1f}", va="center", fontsize=8)
        low = min(v for _, v in named)
        axis.set_xlim(max(0.0, low - 5), 100)
        axis.set_title(f"{task}: test top-1 (%)")
        axis.invert_yaxis()
    figure.set_dpi(110)
    return _save(figure, path)


def token_attention(path: Path, images: np.ndarray, maps: dict[str, np.ndarray]) -> Path:
    """A row per network of a ViT's [CLS] attention over each image (``images``: (N, H, W, C) in [0, 1];
    ``maps``: ``{name: (N, H, W)}``, already at the images' size), the images on the first row."""
    names, count = list(maps), images.shape[0]
    figure, axes = plt.subplots(len(names) + 1, count, figsize=(1.6 * count, 1.7 * (len(names) + 1)), dpi=120,
                                squeeze=False)
    for column in range(count):
        picture = images[column]
        axes[0][column].imshow(picture.squeeze(-1), cmap="gray" if picture.shape[-1] == 1 else None)
        for row, name in enumerate(names, start=1):
            axes[row][column].imshow(maps[name][column], cmap="inferno")
    for row, name in enumerate(["image"] + names):
        axes[row][0].set_ylabel(name, fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("[CLS] attention of the last block (mean over heads)", fontsize=9)
    return _save(figure, path)


def token_norms(path: Path, norms: dict[str, dict[str, Any]], outlier_factor: float) -> Path:
    """A histogram per network of its patch (and register) token norms, the outlier threshold
    (``outlier_factor`` x the median patch norm) marked (``norms``: ``{name: {"patch_norms",
    "register_norms", "registers", "median_patch_norm", "outlier_share"}}``)."""
    names = list(norms)
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), dpi=120, squeeze=False)
    for axis, name in zip(axes[0], names):
        entry = norms[name]
        axis.hist(np.asarray(entry["patch_norms"]), bins=50, alpha=0.8, label="patch tokens")
        if entry["registers"]:
            axis.hist(np.asarray(entry["register_norms"]), bins=20, alpha=0.8, label="registers")
        axis.axvline(outlier_factor * entry["median_patch_norm"], color="k", linestyle="--", linewidth=0.8,
                     label=f"{outlier_factor:g} x median")
        axis.set_yscale("log")
        axis.set_xlabel("token norm (before the final LayerNorm)")
        axis.set_title(f"{name}\noutliers {100 * entry['outlier_share']:.2f}% of patches", fontsize=8)
        axis.legend(fontsize=7)
    return _save(figure, path)


def image_grid(path: Path, images: np.ndarray, rows: list[tuple[str, list[int]]], per_class: int = 8) -> Path:
    """Sample images, a row per (name, indices) of ``rows`` (``images``: (N, H, W, C) uint8)."""
    figure, axes = plt.subplots(len(rows), per_class, figsize=(per_class * 0.9, len(rows) * 0.95), squeeze=False)
    for row, (name, members) in enumerate(rows):
        for col in range(per_class):
            axis = axes[row][col]
            axis.axis("off")
            if col < len(members):
                image = images[members[col]]
                axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray")
        axes[row][0].set_title(str(name), fontsize=7, loc="left")
    figure.set_dpi(100)
    return _save(figure, path)
