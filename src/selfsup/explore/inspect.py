"""Looking at an encoder's features for the report: a 2-D map, nearest-neighbour retrievals and
the linear probe's confusion matrix, all on the features ``selfsup eval`` computes and caches.

The map is UMAP (McInnes et al. 2018) when ``umap-learn`` is installed, t-SNE (van der Maaten
and Hinton 2008, scikit-learn) otherwise, on L2-normalised features with cosine distances:
the geometry the kNN protocol and the contrastive losses use.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SelfsupError
from ..eval import confusion_matrix, cosine_topk
from ..learners import classify_all
from ..recipes.evaluate import checkpoint_evaluator
from ..recipes.loading import load_classifier
from ..report import Inspection, whole_checkpoint

MAP_METHODS = ("auto", "umap", "tsne")


def project_2d(features: torch.Tensor, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, D) features -> (N, 2) coordinates and the name of the method used."""
    if method not in MAP_METHODS:
        raise SelfsupError(f"unknown map method '{method}'; choose from {', '.join(MAP_METHODS)}")
    points = F.normalize(features.float(), dim=1).numpy()
    if len(points) < 5:
        raise SelfsupError(f"a 2-D map needs at least 5 images, got {len(points)}")
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise SelfsupError("the UMAP map needs umap-learn: pip install umap-learn (or 'selfsup[report]'), "
                                   "or --map tsne") from None
        else:
            reducer = umap.UMAP(n_neighbors=min(15, len(points) - 1), min_dist=0.1, metric="cosine",
                                random_state=seed)
            with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": reproducible on purpose
                warnings.simplefilter("ignore", UserWarning)
                return np.asarray(reducer.fit_transform(points)), "UMAP"
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise SelfsupError("the t-SNE map needs scikit-learn (a dependency of selfsup): pip install scikit-learn; "
                           "or selfsup report --no-inspect for the curves and results only") from None
    perplexity = float(min(30.0, (len(points) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(points)), "t-SNE"


def spread_queries(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` indices taking the classes in turn (a random member of each), so every class shows."""
    generator = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(labels == c).squeeze(1) for c in labels.unique().tolist()]
    members = [m[torch.randperm(len(m), generator=generator)] for m in members]
    chosen = []
    for rank in range(max(len(m) for m in members)):
        for group in members:
            if rank < len(group) and len(chosen) < count:
                chosen.append(int(group[rank]))
    return torch.tensor(chosen, dtype=torch.long)


def inspect_checkpoint(path: str | Path, *, points: int = 1000, queries: int = 10, neighbours: int = 8,
                       probe: bool = True, map_method: str = "auto", seed: int = 0,
                       quiet: bool = False) -> Inspection:
    """The :class:`Inspection` of a checkpoint's encoder on its dataset (features cached in ``RUN/eval``).

    ``probe`` fits the linear probe when ``eval/results.json`` has no confusion matrix for this
    encoder yet (and records it there, as ``selfsup eval linear`` would)."""
    if points < 5 or queries < 1 or neighbours < 1:
        raise SelfsupError(f"--points must be >= 5 and --queries/--neighbours >= 1 (got {points}, {queries}, "
                           f"{neighbours})")
    evaluator, config = checkpoint_evaluator(path, quiet=quiet)
    train_features, test_features = evaluator.features("train"), evaluator.features("test")
    train, test = evaluator.train, evaluator.test
    generator = torch.Generator().manual_seed(seed)
    shown = torch.randperm(len(test), generator=generator)[:points].sort().values
    if not quiet:
        print(f"mapping {len(shown)} test images to 2-D ...", flush=True)
    coords, method = project_2d(test_features[shown], map_method, seed)
    asked = spread_queries(test.targets, queries, seed)
    similarities, found = cosine_topk(test_features[asked], train_features, neighbours)
    retrieval_top1 = 100.0 * (train.targets[found[:, 0]] == test.targets[asked]).float().mean().item()
    own = _classifier_confusion(path, evaluator, len(test.classes))
    if own is not None:  # a fine-tuned or distilled network: its own head's errors, not a new probe's
        confusion, top1 = own
        return _inspection(evaluator, method, coords, shown, asked, found, similarities, retrieval_top1,
                           confusion, top1, "Fine-tuned classifier on the test split")
    confusion, linear_top1 = None, None
    results_path = evaluator.out_dir / "results.json"
    try:
        saved = json.loads(results_path.read_text()).get(evaluator.name, {}) if results_path.is_file() else {}
    except (json.JSONDecodeError, AttributeError):
        raise SelfsupError(f"{results_path} is damaged (not a JSON object of results); delete it and run "
                           "selfsup eval (or selfsup report) again") from None
    linear = saved.get("linear") if isinstance(saved, dict) and isinstance(saved.get("linear"), dict) else None
    if probe and (linear is None or "confusion" not in linear):
        if not quiet:
            print("fitting the linear probe on the frozen features ...", flush=True)
        linear = evaluator.run(["linear"], config.eval, seed=config.train.seed)[evaluator.name]["linear"]
    if linear is not None and "confusion" in linear:
        confusion, linear_top1 = np.asarray(linear["confusion"]), linear["top1"]
    return _inspection(evaluator, method, coords, shown, asked, found, similarities, retrieval_top1, confusion,
                       linear_top1, "Linear probe on the test split")


def _classifier_confusion(path: str | Path, evaluator, classes: int) -> tuple[np.ndarray, float] | None:  # noqa: ANN001
    """The confusion matrix and top-1 of a classifier checkpoint's own head on the test split (None
    for a pretraining checkpoint, or a head over other classes than the test split's)."""
    try:
        model, meta = load_classifier(path)
    except SelfsupError:
        return None
    if meta.classifier.get("classes") != classes:
        return None
    model.to(evaluator.device)
    predicted = classify_all(model, evaluator.test.images, evaluator.view, evaluator.batch_size).argmax(1)
    truth = evaluator.test.targets
    return confusion_matrix(truth, predicted, classes).numpy(), round(100.0 * (predicted == truth).float().mean().item(), 2)


def _inspection(evaluator, method: str, coords: np.ndarray, shown: torch.Tensor, asked: torch.Tensor,  # noqa: ANN001
                found: torch.Tensor, similarities: torch.Tensor, retrieval_top1: float, confusion: np.ndarray | None,
                top1: float | None, confusion_source: str) -> Inspection:
    train, test = evaluator.train, evaluator.test
    return Inspection(
        encoder=evaluator.name, classes=list(test.classes), map_method=method, coords=coords,
        labels=test.targets[shown].numpy(), queries=test.images[asked].numpy(),
        query_labels=test.targets[asked].numpy(), neighbours=train.images[found].numpy(),
        neighbour_labels=train.targets[found].numpy(), similarities=similarities.numpy(), confusion=confusion,
        linear_top1=top1, retrieval_top1=retrieval_top1, confusion_source=confusion_source)


def inspect_run(run_dir: str | Path, checkpoint: str = "last", **options: Any) -> tuple[Inspection | None, list[str]]:
    """:func:`inspect_checkpoint` of ``RUN/checkpoints/<checkpoint>.pt``, falling back to ``last.pt`` when it
    is missing or damaged, and the notes a report shows about what it could not inspect (no usable
    checkpoint, or an encoder that cannot be inspected, e.g. on data without labels): the rest of a
    report stands without an inspection."""
    folder = Path(run_dir) / "checkpoints"
    chosen = next((folder / f"{name}.pt" for name in (checkpoint, "last") if whole_checkpoint(folder / f"{name}.pt")),
                  None)
    if chosen is None:
        return None, [f"No usable checkpoint in {folder} (missing or damaged): no embeddings, retrievals or "
                      "confusion matrix; the curves and recorded results only."]
    notes = [] if chosen.stem == checkpoint else [
        f"checkpoints/{checkpoint}.pt is missing or damaged: inspected {chosen.name}."]
    try:
        return inspect_checkpoint(chosen, **options), notes
    except SelfsupError as err:
        return None, [*notes, f"The encoder could not be inspected: {err}"]
