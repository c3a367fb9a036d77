"""Label noise for ClusterFit's study (data.label_noise): exactly p% of the training labels moved
to another class, reproducible by seed, the test split and every evaluation left clean."""
import pytest
import torch

from conftest import tiny_config
from selfsup.data import DataConfig, ImageDataset, load_splits, with_label_noise
from selfsup.errors import SelfsupError
from selfsup.recipes.evaluate import evaluation_splits


def _dataset(count=200, classes=10):
    targets = torch.arange(count) % classes
    targets[:5] = -1  # unlabelled images stay unlabelled
    return ImageDataset(torch.zeros(count, 1, 4, 4, dtype=torch.uint8), targets, [str(c) for c in range(classes)])


def test_exactly_the_fraction_moves_and_never_to_its_own_class():
    clean = _dataset()
    noisy = with_label_noise(clean, 0.3, seed=1)
    changed = noisy.targets != clean.targets
    assert int(changed.sum()) == round(0.3 * 195)
    assert (noisy.targets[:5] == -1).all() and noisy.targets[5:].min() >= 0 and noisy.targets.max() <= 9
    assert torch.equal(noisy.targets, with_label_noise(clean, 0.3, seed=1).targets)
    assert not torch.equal(noisy.targets, with_label_noise(clean, 0.3, seed=2).targets)
    assert torch.equal(with_label_noise(clean, 0.0).targets, clean.targets)
    everything = with_label_noise(clean, 1.0, seed=0)
    assert (everything.targets[5:] != clean.targets[5:]).all()
    # the new class is drawn over the other 9 classes, not a fixed shift
    moved = torch.stack([clean.targets[5:], everything.targets[5:]], 1)
    assert len({tuple(pair) for pair in moved.tolist()}) > 60  # many (true, new) pairs, not one fixed shift
    with pytest.raises(SelfsupError, match=r"label_noise must be a fraction in \[0, 1\], got 1.5"):
        with_label_noise(clean, 1.5)


def test_training_labels_are_noisy_and_evaluation_sees_the_true_ones(mnist_root):
    clean = load_splits(DataConfig(root=str(mnist_root)), labeled=True, quiet=True)
    noisy = load_splits(DataConfig(root=str(mnist_root), label_noise=0.5), labeled=True, quiet=True)
    assert int((noisy.train.targets != clean.train.targets).sum()) == 40  # half of 80
    assert torch.equal(noisy.test.targets, clean.test.targets)
    config = tiny_config(mnist_root, data__label_noise=0.5, eval__train_images="null")
    assert torch.equal(evaluation_splits(config, quiet=True).train.targets, clean.train.targets)
