"""Weighted k-nearest-neighbour classification on features (Wu et al. 2018, NPID, Sec. 3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for chunk in test_features.float().split(chunk_size):
        similarity = F.normalize(chunk, dim=1) @ bank.T                              # (m, N)
        top_similarity, top_index = similarity.topk(k, dim=1)                        # (m, k)
        votes = (top_similarity / temperature).exp() if weighted else torch.ones_like(top_similarity)
        one_hot = F.one_hot(train_labels[top_index], num_classes).float()            # (m, k, C)
        scores.append((one_hot * votes.unsqueeze(-1)).sum(1))
    return torch.cat(scores)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.07,
                 weighted: bool = True) -> float:
    """Top-1 accuracy (%) of :func:`knn_predict`."""
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, weighted)
    return 100.0 * (scores.argmax(1) == test_labels).float().mean().item()
