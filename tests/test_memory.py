"""The memory bank: normalisation, momentum updates, seeded negatives, persistence."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import crash_then_resume, tiny_config
from selfsup.blocks import MemoryBank
from selfsup.engine import checkpoint
from selfsup.recipes.pretrain import pretrain


def test_entries_start_and_stay_unit_length_and_update_by_moving_average():
    bank = MemoryBank(10, 4, momentum=0.5, num_negatives=5, seed=0)
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(10))
    before = bank.bank.clone()
    features = F.normalize(torch.randn(2, 4), dim=1)
    bank.update(torch.tensor([3, 7]), features)
    expected = F.normalize(0.5 * before[[3, 7]] + 0.5 * features, dim=1)
    assert torch.allclose(bank.bank[[3, 7]], expected)
    untouched = [i for i in range(10) if i not in (3, 7)]
    assert torch.equal(bank.bank[untouched], before[untouched])
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(10))


def test_negatives_come_from_the_seeded_generator_and_survive_a_state_dict():
    a, b = MemoryBank(50, 4, num_negatives=8, seed=1), MemoryBank(50, 4, num_negatives=8, seed=1)
    assert torch.equal(a.sample_negatives(), b.sample_negatives())
    a.sample_negatives()  # a moves on ...
    c = MemoryBank(50, 4, num_negatives=8, seed=99)
    c.load_state_dict(a.state_dict())  # ... and c continues exactly where a is
    assert torch.equal(a.sample_negatives(), c.sample_negatives()) and torch.equal(a.bank, c.bank)
    assert a.sample_negatives().shape == (8,) and MemoryBank(5, 4, num_negatives=100).num_negatives == 5


def test_nce_never_uses_a_sample_as_its_own_noise():
    bank = MemoryBank(4, 3, num_negatives=4, seed=0)
    features = bank.bank[[0, 1]].clone()
    own_only = bank.nce(features, torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1]))
    # Drawn entries 0 and 1 are the samples themselves for half the terms; masking leaves
    # each row with two finite noise terms (the other sample's entry).
    assert math.isfinite(own_only.item())
    assert math.isfinite(bank.log_z.item())


def test_fixed_normalizer_is_estimated_once():
    bank = MemoryBank(20, 4, num_negatives=6, normalizer="fixed", seed=0)
    features = F.normalize(torch.randn(3, 4), dim=1)
    bank.nce(features, torch.tensor([0, 1, 2]), bank.sample_negatives())
    first = bank.log_z.clone()
    bank.nce(-features, torch.tensor([0, 1, 2]), bank.sample_negatives())
    assert torch.equal(bank.log_z, first)
    moving = MemoryBank(20, 4, num_negatives=6, seed=0)
    moving.nce(features, torch.tensor([0, 1, 2]), moving.sample_negatives())
    estimate = moving.log_z.clone()
    moving.nce(-features, torch.tensor([0, 1, 2]), moving.sample_negatives())
    assert not torch.equal(moving.log_z, estimate)
    with pytest.raises(ValueError, match="normalizer"):
        MemoryBank(20, 4, normalizer="sometimes")


@pytest.mark.parametrize("method, extra", [
    ("npid", {"method__feature_dim": 16, "method__num_negatives": 32}),
    ("pirl", {"method__feature_dim": 16, "method__num_negatives": 32, "data__image_size": 30}),
])
def test_bank_and_negatives_survive_crash_and_resume(mnist_root, tmp_path, monkeypatch, method, extra):
    config = tiny_config(mnist_root, method__name=method, train__checkpoint_every_steps=1, train__epochs=2,
                         train__knn_every=0, **extra)
    pretrain(config, tmp_path / "straight", quiet=True)
    assert crash_then_resume(config, tmp_path / "crashed", monkeypatch, crash_step=5) == 5
    straight = checkpoint.load(tmp_path / "straight")["model"]
    resumed = checkpoint.load(tmp_path / "crashed")["model"]
    assert straight.keys() == resumed.keys() and "memory.bank" in straight and "memory._extra_state" in straight
    for key in straight:
        assert torch.allclose(straight[key].float(), resumed[key].float(), rtol=1e-5, atol=1e-6), key
    assert not torch.equal(straight["memory.bank"], MemoryBank(64, 16, seed=0).bank)  # it was trained
