"""Weighted k-nearest-neighbour classification on features (Wu et al. 2018, NPID, Sec. 3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tables import markdown_table


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    weighted: bool = True,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (M, num_classes) for ``test_features`` (M, D) given a labelled bank (N, D).

    Similarity is cosine. Weighted (NPID): each of the k nearest neighbours votes for its class
    with exp(s / temperature), defaults k = 200, temperature = 0.07. Plain: one vote each.
    """
    top_similarity, top_index = cosine_topk(test_features, train_features, k, chunk_size)   # (M, k)
    scores = []
    for similarity, index in zip(top_similarity.split(chunk_size), top_index.split(chunk_size)):
        votes = (similarity / temperature).exp() if weighted else torch.ones_like(similarity)
        one_hot = F.one_hot(train_labels[index], num_classes).float()                      # (m, k, C)
        scores.append((one_hot * votes.unsqueeze(-1)).sum(1))
    return torch.cat(scores)


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int = 1024
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices (M, min(k, N)) of the bank rows (N, D) nearest each query
    (M, D), exact; the (m, N) similarities are formed ``chunk_size`` queries at a time."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    found = [(F.normalize(chunk, dim=1) @ bank.T).topk(k, dim=1) for chunk in queries.float().split(chunk_size)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.07,
                 weighted: bool = True) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict`."""
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, weighted)
    return 100.0 * (scores.argmax(1) == test_labels).float().mean().item()


KNN_CONVENTIONS = {10: "DINO", 20: "DINO, solo-learn", 100: "DINO", 200: "DINO, NPID, selfsup's default"}
"""The k each convention reports at T = 0.07: DINO's eval_knn (10, 20, 100, 200), solo-learn's
weighted kNN (20), NPID and selfsup's default (200)."""


def knn_grid_table(name: str, grid: dict[str, dict]) -> str:
    """Results of the weighted kNN at several (k, T) (``results.json`` entries) as a markdown table, with
    the convention each row is."""
    rows = [{"k": e["k"], "T": f"{e['temperature']:g}", "top-1 (%)": f"{e['top1']:.2f}",
             "reported by": KNN_CONVENTIONS.get(e["k"], "") if e["temperature"] == 0.07 else ""}
            for e in sorted(grid.values(), key=lambda e: (e["temperature"], e["k"]))]
    return f"{name}  weighted kNN:\n" + markdown_table(rows, ["k", "T", "top-1 (%)", "reported by"])


@torch.no_grad()
def knn_grid(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, num_classes: int, ks: list[int], temperatures: list[float],
             chunk_size: int = 1024) -> dict[tuple[int, float], float]:
    """Top-1 (%) of the weighted kNN for every (k, T): the neighbours are searched once, for the
    largest k (the nearest k of every smaller k are its first ones)."""
    if not ks or not temperatures or min(ks) < 1 or min(temperatures) <= 0:
        raise ValueError(f"kNN needs k >= 1 and T > 0, got k {ks} and T {temperatures}")
    top_similarity, top_index = cosine_topk(test_features, train_features, max(ks), chunk_size)
    correct = {(k, t): 0 for k in ks for t in temperatures}
    for similarity, index, truth in zip(top_similarity.split(chunk_size), top_index.split(chunk_size),
                                        test_labels.split(chunk_size)):
        neighbours = train_labels[index]                                                  # (m, K)
        for k in ks:
            for temperature in temperatures:
                votes = (similarity[:, :k] / temperature).exp()
                scores = torch.zeros(len(index), num_classes, device=votes.device).scatter_add_(
                    1, neighbours[:, :k], votes)
                correct[(k, temperature)] += (scores.argmax(1) == truth).sum().item()
    return {key: 100.0 * count / len(test_labels) for key, count in correct.items()}
