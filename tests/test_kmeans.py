"""k-means (ClusterFit's clustering step): the torch backend against the known partition of
separable toy data and against a direct Lloyd step, faiss agreeing with it, and the edge cases."""
import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.eval.kmeans import faiss_available, kmeans, nearest_centroids

CENTRES = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])


def _blobs(per_cluster=50, spread=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CENTRES)).repeat_interleave(per_cluster)
    points = CENTRES[labels] + spread * torch.randn(len(labels), 3, generator=generator)
    return points, labels


def _same_partition(a, b):
    """Equal up to renaming the clusters: a one-to-one map between the labels of a and of b."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_torch_kmeans_recovers_separable_clusters_and_their_means():
    points, labels = _blobs()
    result = kmeans(points, 4, backend="torch", seed=0)
    assert result.backend == "torch" and _same_partition(result.assignments, labels)
    for cluster in range(4):
        members = points[result.assignments == cluster]
        assert torch.allclose(result.centroids[cluster], members.mean(0), atol=1e-5)  # a fixed point of Lloyd
    expected = sum(float((points[labels == c] - points[labels == c].mean(0)).square().sum()) for c in range(4))
    assert result.inertia == pytest.approx(expected, rel=1e-5)


def test_lloyd_iterates_to_a_fixed_point_on_overlapping_data():
    points, _ = _blobs(per_cluster=40, spread=4.0)
    one_step = kmeans(points, 5, backend="torch", seed=2, iterations=1)
    result = kmeans(points, 5, backend="torch", seed=2, iterations=100, tolerance=0.0)
    assert 1 < result.iterations < 100 and result.inertia < one_step.inertia
    for cluster in range(5):
        assert torch.allclose(result.centroids[cluster], points[result.assignments == cluster].mean(0), atol=1e-4)


def test_kmeans_is_reproducible_by_seed():
    points, _ = _blobs(per_cluster=30, spread=3.0)
    a, b = kmeans(points, 6, backend="torch", seed=1), kmeans(points, 6, backend="torch", seed=1)
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.centroids, b.centroids)


def test_nearest_centroids_in_chunks_equals_the_full_distance_matrix():
    generator = torch.Generator().manual_seed(0)
    x, centroids = torch.randn(37, 5, generator=generator), torch.randn(4, 5, generator=generator)
    index, distance = nearest_centroids(x, centroids, chunk=8)
    full = torch.cdist(x, centroids).square()
    assert torch.equal(index, full.argmin(1)) and torch.allclose(distance, full.min(1).values, atol=1e-5)


def test_every_cluster_keeps_members_when_points_repeat():
    points = torch.tensor([[0.0, 0.0]] * 10 + [[5.0, 5.0]] * 10 + [[9.0, 0.0]])
    result = kmeans(points, 3, backend="torch", seed=0)
    assert torch.isfinite(result.centroids).all()
    assert torch.bincount(result.assignments, minlength=3).min() >= 1
    assert result.inertia == pytest.approx(0.0, abs=1e-6)


def test_spherical_kmeans_returns_unit_centroids():
    points, labels = _blobs()
    result = kmeans(points[labels > 0], 3, backend="torch", spherical=True)
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(3), atol=1e-5)
    assert _same_partition(result.assignments, labels[labels > 0])


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")
@pytest.mark.parametrize("spherical", [False, True])
def test_faiss_and_torch_agree_on_separable_data(spherical):
    points, labels = _blobs()
    if spherical:
        points, labels = points[labels > 0], labels[labels > 0]
    k = len(labels.unique())
    ours, theirs = (kmeans(points, k, backend=b, spherical=spherical, seed=0) for b in ("torch", "faiss"))
    assert theirs.backend == "faiss"
    assert _same_partition(ours.assignments, theirs.assignments) and _same_partition(ours.assignments, labels)
    order_ours, order_theirs = ours.centroids.sum(1).argsort(), theirs.centroids.sum(1).argsort()
    assert torch.allclose(ours.centroids[order_ours], theirs.centroids[order_theirs], atol=1e-4)
    assert ours.inertia == pytest.approx(theirs.inertia, rel=1e-4)


def test_bad_input_is_refused_with_the_reason():
    points, _ = _blobs(per_cluster=2)
    for call, message in (
        (lambda: kmeans(points, 9), r"1 <= K <= the number of points \(8\)"),
        (lambda: kmeans(points[0], 2), r"needs \(N, D\) features"),
        (lambda: kmeans(torch.full((4, 2), float("nan")), 2), "NaN or infinite"),
        (lambda: kmeans(points, 2, backend="sklearn"), "unknown k-means backend 'sklearn'"),
    ):
        with pytest.raises(SelfsupError, match=message):
            call()
