"""Few-shot evaluation: N-way K-shot episodes classified by the nearest class centroid.

Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning", NeurIPS 2017: a class is
the mean of its support embeddings, a query goes to the nearest mean (squared Euclidean
distance). Here the embeddings are an encoder's frozen, L2-normalised features, and nothing is
trained: the episodes measure how well the features separate classes from a handful of
examples (the metric-based few-shot protocol, e.g. Chen et al. 2019, "A Closer Look at
Few-shot Classification").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SelfsupError


@dataclass
class Episode:
    """One N-way K-shot task: indices into the evaluated set, and the classes drawn for it."""

    classes: torch.Tensor
    """(N,) the dataset classes of ways 0..N-1."""
    support: torch.Tensor
    """(N * K,) indices, way-major: the K of way 0, then way 1 ..."""
    query: torch.Tensor
    """(N * Q,) indices, way-major, none of them in ``support``."""


def sample_episodes(labels: torch.Tensor, ways: int, shots: int, queries: int, count: int, seed: int = 0,
                    classes: list[int] | None = None) -> list[Episode]:
    """``count`` episodes over the images whose label is in ``classes`` (None: every label >= 0):
    each draws ``ways`` classes, then ``shots`` support and ``queries`` query images per class,
    without replacement, so support and query never share an image. Seeded."""
    present = sorted(set(labels[labels >= 0].tolist()))
    pool = present if classes is None else sorted(set(classes))
    missing = [c for c in pool if c not in present]
    if missing:
        raise SelfsupError(f"few-shot classes {missing} have no images here (classes present: {present})")
    if ways < 2 or shots < 1 or queries < 1 or count < 1:
        raise SelfsupError(f"few-shot episodes need ways >= 2, shots >= 1, queries >= 1 and episodes >= 1, got "
                           f"{ways}, {shots}, {queries}, {count}")
    if ways > len(pool):
        raise SelfsupError(f"{ways}-way episodes need {ways} classes; only {len(pool)} to draw from")
    members = {c: (labels == c).nonzero().squeeze(1) for c in pool}
    short = {c: len(m) for c, m in members.items() if len(m) < shots + queries}
    if short:
        raise SelfsupError(f"{shots}-shot episodes with {queries} queries need {shots + queries} images per class; "
                           f"these classes have fewer: {short}")
    generator = torch.Generator().manual_seed(seed)
    episodes = []
    for _ in range(count):
        chosen = torch.tensor(pool)[torch.randperm(len(pool), generator=generator)[:ways]]
        support, query = [], []
        for c in chosen.tolist():
            order = members[c][torch.randperm(len(members[c]), generator=generator)[:shots + queries]]
            support.append(order[:shots])
            query.append(order[shots:])
        episodes.append(Episode(chosen, torch.cat(support), torch.cat(query)))
    return episodes


def nearest_centroid(support: torch.Tensor, ways: int, query: torch.Tensor) -> torch.Tensor:
    """(N * K, D) way-major support features, (M, D) queries -> (M,) the way of the nearest centroid."""
    centroids = support.view(ways, -1, support.shape[-1]).mean(1)
    return torch.cdist(query, centroids).argmin(1)


def fewshot_accuracy(features: torch.Tensor, labels: torch.Tensor, ways: int = 5, shots: int = 1,
                     queries: int = 15, episodes: int = 600, seed: int = 0,
                     classes: list[int] | None = None) -> dict[str, float]:
    """Mean accuracy (%) over ``episodes`` N-way K-shot episodes with nearest-centroid classification
    of L2-normalised ``features``, and the half-width of its 95% interval (1.96 sigma / sqrt(n))."""
    features = F.normalize(features.float(), dim=1)
    accuracies = []
    for episode in sample_episodes(labels, ways, shots, queries, episodes, seed, classes):
        predicted = nearest_centroid(features[episode.support], ways, features[episode.query])
        truth = torch.arange(ways).repeat_interleave(queries)
        accuracies.append(100.0 * (predicted == truth).float().mean().item())
    values = torch.tensor(accuracies)
    spread = values.std().item() if len(values) > 1 else 0.0
    return {"top1": values.mean().item(), "ci95": 1.96 * spread / math.sqrt(len(values)), "episodes": len(values)}
