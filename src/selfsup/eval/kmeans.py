"""k-means on feature vectors: ClusterFit's clustering step (Yan et al. 2020), exact in torch or
with faiss when it is installed.

The torch backend is Lloyd's algorithm with k-means++ seeding (Arthur & Vassilvitskii 2007),
distances computed in chunks on the features' device (||x||^2 - 2 x.c + ||c||^2), and empty
clusters re-seeded with the points farthest from their centroids, so every one of the K
pseudo-classes has members. The faiss backend (``faiss.Kmeans``, what ClusterFit and DeepCluster
used) is told to use every point (no sub-sampling) and starts from the same k-means++ seeds;
both give the same partition on separable data (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import SelfsupError

Backend = Literal["auto", "torch", "faiss"]


@dataclass
class KMeansResult:
    centroids: torch.Tensor
    """(K, D) float32 cluster centres (unit length when ``spherical``)."""
    assignments: torch.Tensor
    """(N,) int64 index of each point's nearest centroid."""
    inertia: float
    """Sum of squared distances of the points to their centroids."""
    iterations: int
    backend: str


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def kmeans(features: torch.Tensor, k: int, *, iterations: int = 50, seed: int = 0, backend: Backend = "auto",
           spherical: bool = False, tolerance: float = 1e-5, chunk: int = 16384) -> KMeansResult:
    """Cluster the rows of ``features`` (N, D) into ``k`` clusters.

    ``spherical``: cluster directions (rows and centroids L2-normalised; ClusterFit's setting
    for contrastive features). ``backend``: ``auto`` takes faiss when installed, else torch.
    The torch backend stops early when the inertia improves by less than ``tolerance`` (relative).
    """
    if features.ndim != 2:
        raise SelfsupError(f"k-means needs (N, D) features, got shape {tuple(features.shape)}")
    if not 1 <= k <= len(features):
        raise SelfsupError(f"k-means: K = {k} clusters needs 1 <= K <= the number of points ({len(features)})")
    if not torch.isfinite(features).all():
        raise SelfsupError("k-means: the features hold NaN or infinite values (a diverged network?)")
    if iterations < 1:
        raise SelfsupError(f"k-means: iterations must be >= 1, got {iterations}")
    x = features.float()
    if spherical:
        x = F.normalize(x, dim=1)
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    if backend == "faiss":
        if not faiss_available():
            raise SelfsupError("k-means backend 'faiss' needs the faiss-cpu (or faiss-gpu) package: "
                               "pip install faiss-cpu, or use the torch backend")
        return _faiss_kmeans(x, k, iterations, seed, spherical, chunk)
    if backend != "torch":
        raise SelfsupError(f"unknown k-means backend '{backend}'; use auto, torch or faiss")
    return _torch_kmeans(x, k, iterations, seed, spherical, tolerance, chunk)


def nearest_centroids(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest centroid, squared distance to it) for every row of ``x``."""
    c_norms = centroids.square().sum(1)
    indices, distances = [], []
    for part in x.split(chunk):
        d = part.square().sum(1, keepdim=True) - 2 * part @ centroids.T + c_norms
        best, index = d.min(1)
        indices.append(index)
        distances.append(best.clamp_min(0))
    return torch.cat(indices), torch.cat(distances)


def _plus_plus_seeds(x: torch.Tensor, k: int, generator: torch.Generator, chunk: int) -> torch.Tensor:
    """k-means++: each next seed drawn with probability proportional to its squared distance."""
    first = torch.randint(len(x), (1,), generator=generator).item()
    centroids = x[first:first + 1].clone()
    _, closest = nearest_centroids(x, centroids, chunk)
    for _ in range(1, k):
        weights = closest.double().cpu()
        index = (torch.multinomial(weights, 1, generator=generator).item() if weights.sum() > 0
                 else torch.randint(len(x), (1,), generator=generator).item())  # all points coincide with seeds
        centroids = torch.cat([centroids, x[index:index + 1]])
        _, distance = nearest_centroids(x, centroids[-1:], chunk)
        closest = torch.minimum(closest, distance)
    return centroids


def _torch_kmeans(x: torch.Tensor, k: int, iterations: int, seed: int, spherical: bool, tolerance: float,
                  chunk: int) -> KMeansResult:
    generator = torch.Generator().manual_seed(seed)
    centroids = _plus_plus_seeds(x, k, generator, chunk)
    previous = float("inf")
    done = 0
    for done in range(1, iterations + 1):
        assignments, distances = nearest_centroids(x, centroids, chunk)
        counts = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        empty = (counts == 0).nonzero().squeeze(1)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        if len(empty):  # re-seed empty clusters with the worst-served points
            farthest = distances.topk(len(empty)).indices
            centroids[empty] = x[farthest]
        if spherical:
            centroids = F.normalize(centroids, dim=1)
        inertia = float(distances.sum())
        if len(empty) == 0 and previous < float("inf") and previous - inertia <= tolerance * previous:
            break
        previous = inertia
    assignments, distances = nearest_centroids(x, centroids, chunk)
    return KMeansResult(centroids, assignments, float(distances.sum()), done, "torch")


def _faiss_kmeans(x: torch.Tensor, k: int, iterations: int, seed: int, spherical: bool, chunk: int) -> KMeansResult:
    import faiss
    import numpy as np

    data = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
    # Started from the same k-means++ seeds as the torch backend (faiss's own start is k random
    # points, which merges separable clusters often enough to matter).
    seeds = _plus_plus_seeds(x, k, torch.Generator().manual_seed(seed), chunk)
    model = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, spherical=spherical, verbose=False,
                         min_points_per_centroid=1, max_points_per_centroid=max(len(data), 1))
    model.train(data, init_centroids=np.ascontiguousarray(seeds.cpu().numpy(), dtype=np.float32))
    centroids = torch.from_numpy(model.centroids.copy()).to(x.device)
    assignments, distances = nearest_centroids(x, centroids, chunk)
    return KMeansResult(centroids, assignments, float(distances.sum()), iterations, "faiss")
