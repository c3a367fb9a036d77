"""data.classes: a transfer task on classes a network never saw (ClusterFit's protocol, issue 22)."""
import pytest
import torch

from conftest import tiny_config
from selfsup.config import apply_overrides, resolve
from selfsup.data import ImageDataset, load_splits
from selfsup.data.splits import only_classes
from selfsup.errors import SelfsupError


def test_only_the_chosen_classes_stay_numbered_in_the_order_given():
    targets = torch.tensor([0, 1, 2, 3, -1, 2, 1, 0])
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()
    data = ImageDataset(images, targets, ["a", "b", "c", "d"])
    kept = only_classes(data, ["c", 1])
    assert kept.classes == ["c", "b"]
    assert kept.targets.tolist() == [1, 0, 0, 1]
    assert kept.images[:, 0, 0, 0].tolist() == [1, 2, 5, 6]  # the images of those classes, in their order
    with pytest.raises(SelfsupError, match="no class 'e'"):
        only_classes(data, ["e"])
    pretraining = only_classes(data, ["c", 1], keep_unlabelled=True)  # STL-10's unlabeled part stays
    assert pretraining.targets.tolist() == [1, 0, -1, 0, 1]


def test_both_splits_and_the_monitor_hold_out_keep_only_those_classes(mnist_root):
    config = tiny_config(mnist_root, data__classes="[3, 1]")
    splits = load_splits(config.data, labeled=True, quiet=True)
    assert splits.train.classes == splits.test.classes == ["Dress", "Trouser"]
    assert sorted(splits.train.targets.unique().tolist()) == [0, 1] == sorted(splits.test.targets.unique().tolist())
    assert len(splits.train) == 40 and len(splits.test) == 16  # 2 of the 4 classes
    monitored = load_splits(config.data, hold_out=8, quiet=True)
    assert monitored.held_out.targets.bincount().tolist() == [4, 4] and len(monitored.train) == 32
    everything = load_splits(resolve(apply_overrides(config.to_dict(), ["data.classes=null"])).data, labeled=True,
                             quiet=True)
    assert len(everything.train.classes) == 10 and len(everything.train) == 80


def test_evaluations_on_other_classes_of_one_size_never_share_cached_features(pretrained_run, tmp_path):
    from selfsup.recipes.evaluate import checkpoint_evaluator

    features = {}
    for chosen in ("[0, 1]", "[2, 3]"):
        evaluator, _ = checkpoint_evaluator(pretrained_run, [f"data.classes={chosen}"], tmp_path / "eval", quiet=True)
        assert len(evaluator.train) == 40  # one size: only the images tell the sets apart
        features[chosen] = evaluator.features("train")
    assert not torch.equal(features["[0, 1]"], features["[2, 3]"])
    again, _ = checkpoint_evaluator(pretrained_run, ["data.classes=[0, 1]"], tmp_path / "eval", quiet=True)
    assert torch.equal(again.features("train"), features["[0, 1]"])
