"""Multi-task learning: cross-stitch mixing and the soft-sharing penalty by hand, DWA's weights
against its formula, the tasks' targets, every sharing lowering its loss on a fixed batch, and
the command end to end (baselines, resume after a kill, bad input)."""
import json
import math

import pytest
import torch

from selfsup.cli import main
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.models.backbones import ToyNet
from conftest import killed_then_finished, tiny_cli_sets
from selfsup.learners.multitask import CrossStitch, MultiTaskLearner, SharedTrunks, Task, build_tasks

FMNIST = DataFacts("fashion_mnist", 1, 28, (0.5,), (0.25,), tuple(str(i) for i in range(10)))


def _learner(sharing, tasks=None, **kwargs):
    torch.manual_seed(0)
    tasks = tasks or [Task("class", 4), Task("rotation", 4, rotated=True)]
    return MultiTaskLearner(ToyNet(1, 4), tasks, torch.nn.Identity(), sharing=sharing, **kwargs)


def test_cross_stitch_mixes_feature_maps_by_its_matrix():
    stitch = CrossStitch(2)
    assert torch.allclose(stitch.alpha, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    a, b = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 3.0)
    mixed = stitch([a, b])
    assert mixed[0].flatten().tolist() == pytest.approx([1.2] * 4) and mixed[1].flatten().tolist() == pytest.approx([2.8] * 4)
    assert CrossStitch(3).alpha.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # With the identity, cross-stitched columns are the independent trunks.
    trunks = SharedTrunks(ToyNet(1, 4), 2, "cross-stitch")
    for unit in trunks.stitches:
        unit.alpha.data = torch.eye(2)
    x = torch.randn(3, 1, 8, 8)
    trunks.eval()
    out = trunks(x)
    assert torch.allclose(out[0], trunks.trunks[0](x), atol=1e-6) and torch.allclose(out[1], trunks.trunks[1](x), atol=1e-6)


def test_soft_sharing_penalty_is_the_squared_distance_between_trunks():
    trunks = SharedTrunks(ToyNet(1, 4), 3, "soft")
    assert trunks.soft_penalty().item() == 0.0  # three copies of the starting encoder
    first = next(trunks.trunks[1].parameters())
    with torch.no_grad():
        first.add_(0.5)
    # the perturbed trunk is 0.5 away from each of the two others in every entry of one tensor
    assert trunks.soft_penalty().item() == pytest.approx(2 * 0.25 * first.numel(), rel=1e-5)
    assert len(list(SharedTrunks(ToyNet(1, 4), 3, "hard").trunks)) == 1


def test_dynamic_weight_average_by_hand():
    learner = _learner("hard", weighting="dwa", epochs=4)
    assert learner.task_weights(0.3).tolist() == [1.0, 1.0]  # first two epochs
    learner.epoch_losses = torch.tensor([[2.0, 1.0], [1.0, 0.9]])  # class improved a lot, rotation hardly
    weights = learner.task_weights(0.6)
    r = torch.tensor([0.5, 0.9])
    assert weights.tolist() == pytest.approx((2 * torch.softmax(r / 2, 0)).tolist())
    assert weights[1] > weights[0] and weights.sum().item() == pytest.approx(2.0)
    # The memory shifts when an epoch ends: the running mean becomes the latest epoch's loss.
    learner = _learner("hard", weighting="dwa", epochs=4)
    learner._track(torch.tensor([2.0, 4.0]), 0.0)
    learner._track(torch.tensor([4.0, 2.0]), 0.1)
    learner._track(torch.tensor([1.0, 1.0]), 0.3)
    assert learner.epoch_losses[1].tolist() == [3.0, 3.0] and learner.running[-1] == 1


def test_tasks_and_their_targets():
    cls, coarse, rotation = build_tasks(["class", "coarse", "rotation"], FMNIST)
    labels, turns = torch.tensor([0, 1, 5, 8]), torch.tensor([3, 0, 1, 2])
    assert coarse.outputs == 4 and coarse.targets(labels, turns).tolist() == [0, 1, 2, 3]
    assert cls.targets(labels, turns).tolist() == [0, 1, 5, 8] and rotation.targets(labels, turns).tolist() == [3, 0, 1, 2]
    with pytest.raises(SelfsupError, match="cover each"):
        build_tasks(["coarse"], FMNIST, [[0, 1], [1, 2]])
    with pytest.raises(SelfsupError, match="no coarse grouping"):
        build_tasks(["coarse"], DataFacts("stl10", 3, 96, (0.5,) * 3, (0.25,) * 3, tuple("abcd")))
    with pytest.raises(SelfsupError, match="distinct names"):
        build_tasks(["class", "depth"], FMNIST)
    with pytest.raises(SelfsupError, match="not trained"):
        _learner("hard", weights={"coarse": 2.0})


@pytest.mark.parametrize("sharing", ["hard", "soft", "cross-stitch"])
def test_every_sharing_lowers_its_loss_on_a_fixed_batch(sharing):
    learner = _learner(sharing)
    images = torch.randn(16, 1, 8, 8)
    targets = torch.arange(16) % 4
    images[targets == 0, :, :2] += 2
    images[targets == 1, :, -2:] += 2
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # the same rotations every step
        out = learner(Batch([images], targets, torch.arange(16)), 0.5)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses
    assert set(out) >= {"loss_class", "loss_rotation", "weight_class"}
    if sharing == "cross-stitch":
        assert any(not torch.allclose(unit.alpha, CrossStitch(2).alpha) for unit in learner.encoder.stitches)


MULTITASK = ["--epochs", "2", "--batch-size", "16", "--device", "cpu", "--quiet"]


def test_multitask_command_end_to_end_and_resumes_after_a_kill(mnist_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mtl"
    command = ["multitask", "--tasks", "class", "rotation", "--sharing", "hard", "cross-stitch", "--weighting",
               "dwa", "--run-dir", str(out)] + MULTITASK + tiny_cli_sets(mnist_root)
    trained = killed_then_finished(command, monkeypatch, "cross-stitch-dwa", 3)
    assert trained and all(s.endswith("cross-stitch-dwa") for s in trained)  # the finished runs are read back
    printed = capsys.readouterr().out
    assert "single-rotation" in printed and "cross-stitch-dwa" in printed
    report = json.loads((out / "multitask.json").read_text())
    assert [r["run"] for r in report["rows"]] == ["single-class", "single-rotation", "hard-dwa", "cross-stitch-dwa"]
    stitched = json.loads((out / "cross-stitch-dwa" / "summary.json").read_text())
    assert 0 <= stitched["test_top1_rotation"] <= 100 and stitched["test_top1"] == stitched["test_top1_class"]
    assert not math.isnan(report["rows"][-1]["rotation top-1"])
    assert (out / "multitask.png").stat().st_size > 5000
    assert main(["eval", "knn", str(out / "cross-stitch-dwa"), "--quiet"]) == 0  # task 0's trunk reads back
    # The same comparison at another rate does not report the old numbers as its own.
    capsys.readouterr()
    assert main(command + ["--lr", "0.5"]) == 2
    assert "single-class was made with other settings (training.optim.lr: then" in capsys.readouterr().err


def test_multitask_refuses_bad_input(mnist_root, tmp_path, capsys):
    base = ["multitask", "--run-dir", str(tmp_path / "x")] + MULTITASK + tiny_cli_sets(mnist_root)
    assert main(base + ["--tasks", "class", "depth"]) == 2
    assert "distinct names" in capsys.readouterr().err
    assert main(base + ["--coarse", "0,1", "2,x"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert main(base + ["--sharing", "mtan"]) == 2
    assert "unknown sharing 'mtan'" in capsys.readouterr().err
    assert main(base + ["--weights", "coarse"]) == 2
    assert "TASK=WEIGHT" in capsys.readouterr().err
