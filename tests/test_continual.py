"""Continual-learning bookkeeping: task splits and the accuracy matrix on a hand-made sequence."""
import json

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.eval.continual import AccuracyMatrix, split_classes, task_index


def test_split_fashion_mnist_into_five_tasks_of_two_classes():
    assert split_classes(10, 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert split_classes(4, 2, order=[3, 1, 0, 2]) == [[3, 1], [0, 2]]
    with pytest.raises(SelfsupError, match="do not split"):
        split_classes(10, 3)
    with pytest.raises(SelfsupError, match="permutation"):
        split_classes(4, 2, order=[0, 0, 1, 2])
    targets = torch.tensor([0, 3, 1, 2, 3, 0])
    assert task_index(targets, [3, 1]).tolist() == [1, 2, 4]


def test_accuracy_matrix_metrics_by_hand(tmp_path):
    """Three tasks. After task 0: 90 on it. After task 1: 60, 80. After task 2: 50, 70, 95.
    Average = (50 + 70 + 95) / 3; BWT = ((50 - 90) + (70 - 80)) / 2 = -25;
    forgetting = ((max(90, 60) - 50) + (80 - 70)) / 2 = 25."""
    matrix = AccuracyMatrix(3)
    for (i, j), value in {(0, 0): 90, (1, 0): 60, (1, 1): 80, (2, 0): 50, (2, 1): 70, (2, 2): 95}.items():
        matrix.record(i, j, value)
    assert matrix.average_accuracy() == pytest.approx(215 / 3)
    assert matrix.backward_transfer() == pytest.approx(-25.0)
    assert matrix.forgetting() == pytest.approx(25.0)
    # Forgetting takes the best accuracy before the end, not the first: a task that improved
    # later and then dropped counts from its peak.
    matrix.record(1, 0, 95)
    assert matrix.forgetting() == pytest.approx(((95 - 50) + (80 - 70)) / 2)
    report = matrix.to_dict()
    assert report["matrix"][0] == [90.0, None, None] and report["average_accuracy"] == pytest.approx(71.67)
    json.dumps(report)  # serialisable: NaN became None
    assert "| 2 | 50.00 | 70.00 | 95.00 |" in matrix.markdown()
    matrix.plot(tmp_path / "matrix.png", "hand-made")
    assert (tmp_path / "matrix.png").stat().st_size > 1000


def test_an_incomplete_matrix_refuses_final_metrics():
    matrix = AccuracyMatrix(2)
    matrix.record(0, 0, 80)
    with pytest.raises(SelfsupError, match="incomplete"):
        matrix.average_accuracy()
    single = AccuracyMatrix(1)
    single.record(0, 0, 70)
    assert single.forgetting() == 0.0 and single.backward_transfer() == 0.0 and single.average_accuracy() == 70
