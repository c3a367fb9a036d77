import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy, knn_predict
from selfsup.eval.linear import balanced_holdout, fit_logistic, linear_probe
from selfsup.models import build_backbone
from selfsup.views import EvalView


def naive_knn_scores(bank, labels, queries, classes, k, t, weighted):
    scores = torch.zeros(len(queries), classes)
    for q, query in enumerate(queries):
        sims = [(float(F.cosine_similarity(query, b, dim=0)), int(y)) for b, y in zip(bank, labels)]
        for sim, label in sorted(sims, reverse=True)[:k]:
            scores[q, label] += math.exp(sim / t) if weighted else 1.0
    return scores


@pytest.mark.parametrize("weighted", [True, False])
def test_knn_matches_naive_reference(weighted):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(30, 5, generator=g), torch.randn(7, 5, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    ours = knn_predict(bank, labels, queries, 3, k=6, temperature=0.1, weighted=weighted, chunk_size=3)
    assert torch.allclose(ours, naive_knn_scores(bank, labels, queries, 3, 6, 0.1, weighted), rtol=1e-4)


def test_knn_weighting_changes_the_vote():
    # One very close neighbour of class 1 against two distant ones of class 0.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.2]])
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.07).argmax() == 1
    assert knn_predict(bank, labels, query, 2, k=3, weighted=False).argmax() == 0
    assert knn_accuracy(bank, labels, bank, labels, 2, k=1) == 100.0


def test_linear_probe_separates_separable_data_and_picks_a_penalty():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 4
    labels = torch.arange(400) % 4
    features = centers[labels] + torch.randn(400, 16, generator=g)
    result = linear_probe(features[:300], labels[:300], features[300:], labels[300:], 4, [0.0, 1e-3], max_iter=50)
    assert result["top1"] == 100.0 and result["weight_decay"] in (0.0, 1e-3)
    assert set(result["validation_top1"]) == {"0.0", "0.001"}


def test_logistic_regression_reaches_the_optimum_of_a_tiny_problem():
    # Two points, one feature, strong penalty: the optimum balances the penalty and the log-loss.
    x, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([1, 0])
    weight, bias = fit_logistic(x, y, 2, weight_decay=1.0, max_iter=200)
    w = float(weight[1, 0] - weight[0, 0])  # the two-class model depends on the difference
    # stationarity: d/dw [log(1 + exp(-w)) + w^2 / 4] = 0 for the symmetric solution w1 = -w0 = w/2
    assert -1 / (1 + math.exp(w)) + w / 2 == pytest.approx(0.0, abs=1e-4)
    assert bias.abs().max() < 1e-4


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_both_solvers_learn(solver):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=g)
    y = (x[:, 0] > 0).long()
    weight, bias = fit_logistic(x, y, 2, 1e-4, solver=solver, max_iter=50, epochs=20, batch_size=32)
    assert ((x @ weight.T + bias).argmax(1) == y).float().mean() > 0.95


def test_balanced_holdout_takes_a_fraction_of_every_class():
    labels = torch.arange(100) % 4
    keep, held = balanced_holdout(labels, 0.1, seed=0)
    assert torch.bincount(labels[held]).tolist() == [2, 2, 2, 2]
    assert len(set(keep.tolist()) | set(held.tolist())) == 100 and not set(keep.tolist()) & set(held.tolist())


def test_feature_extraction_restores_mode_and_matches_direct_forward():
    net = build_backbone("toy", 1, 8, width=4)
    net.train()
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    view = EvalView(8, (0.5,), (0.2,))
    features = extract_features(net, images, view, batch_size=3)
    assert net.training and features.shape == (10, net.num_features) and features.dtype == torch.float32
    net.eval()
    with torch.no_grad():
        assert torch.allclose(features, net(view(images)), atol=1e-5)


def test_evaluation_uses_only_the_labelled_part_of_a_pretraining_split(tmp_path):
    from conftest import write_stl10
    from selfsup.data import DataConfig, load_splits

    root = write_stl10(tmp_path, train=10, test=6, unlabeled=8)
    splits = load_splits(DataConfig(name="stl10", root=str(root), train_split="train+unlabeled"), labeled=True,
                         quiet=True)
    assert len(splits.train) == 10 and (splits.train.targets >= 0).all() and len(splits.test) == 6


def test_knn_grid_equals_one_search_per_setting():
    from selfsup.eval.knn import knn_accuracy, knn_grid

    torch.manual_seed(0)
    train, test = torch.randn(300, 16), torch.randn(80, 16)
    train_labels, test_labels = torch.randint(0, 5, (300,)), torch.randint(0, 5, (80,))
    train[:, :5] += 3 * torch.nn.functional.one_hot(train_labels, 5)
    test[:, :5] += 3 * torch.nn.functional.one_hot(test_labels, 5)
    grid = knn_grid(train, train_labels, test, test_labels, 5, [10, 20, 100, 200], [0.07, 0.5])
    assert len(grid) == 8
    for (k, t), top1 in grid.items():
        assert top1 == pytest.approx(knn_accuracy(train, train_labels, test, test_labels, 5, k, t), abs=1e-4)
    with pytest.raises(ValueError, match="k >= 1 and T > 0"):
        knn_grid(train, train_labels, test, test_labels, 5, [0], [0.07])
