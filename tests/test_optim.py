import math

import pytest
import torch
from torch import nn

from selfsup.engine.optim import (LARS, OptimConfig, Schedule, apply_schedule, build_optimizer, cosine_schedule,
                                  default_param_groups, scaled_lr, split_groups)
from selfsup.errors import SelfsupError


def test_cosine_schedule_values():
    assert cosine_schedule(0, 100, 1.0, warmup_steps=10) == 0.0
    assert cosine_schedule(5, 100, 1.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_schedule(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 1.0, final=0.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_schedule(100, 100, 1.0, final=0.1, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_schedule(0, 100, 0.996, final=1.0) == pytest.approx(0.996)  # an EMA momentum schedule


def test_lr_scaling_rules():
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)
    assert scaled_lr(0.3, 1024, "none") == 0.3


def test_norms_and_biases_are_exempt_from_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    decayed, exempt = split_groups([{"name": "all", "params": list(model.parameters())}], {})
    assert len(decayed["params"]) == 2 and decayed["wd_scale"] == 1.0 and decayed["lars"]
    assert len(exempt["params"]) == 4 and exempt["wd_scale"] == 0.0 and not exempt["lars"]
    assert len(split_groups([{"name": "all", "params": list(model.parameters())}], {}, exclude_norm_bias=False)) == 1


def test_barlow_twins_trains_norms_and_biases_at_the_papers_lower_rate():
    """Zbontar et al. 2021 (and the official code): LARS at 0.2 x B/256 for the weights, 0.0048 x B/256 for
    the biases and BatchNorm parameters, which LARS does not adapt: one SGD step moves them 0.024 as far."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    optimizer = build_optimizer([{"name": "all", "params": list(model.parameters())}],
                                OptimConfig(name="lars", exempt_lr_scale=0.0048 / 0.2, weight_decay=0.0), lr=0.4)
    weights, norms = optimizer.param_groups
    assert weights["lr"] == pytest.approx(0.4) and norms["lr"] == pytest.approx(0.4 * 0.024)
    apply_schedule(optimizer, lr=0.2, weight_decay=0.0)  # the schedule keeps the ratio
    assert norms["lr"] == pytest.approx(0.2 * 0.024) and weights["lr"] == pytest.approx(0.2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    bias = model[0].bias.detach().clone()
    optimizer.step()
    assert torch.allclose(bias - model[0].bias, torch.full((4,), 0.2 * 0.024))  # plain SGD, at the lower rate
    from selfsup.config import find_config, read_yaml
    for preset in ("fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder"):
        assert read_yaml(find_config(f"barlow_twins_{preset}"))["optim"]["exempt_lr_scale"] == pytest.approx(0.024)
    with pytest.raises(SelfsupError, match="exclude_norm_bias=false gives no group"):
        build_optimizer([{"name": "all", "params": list(model.parameters())}],
                        OptimConfig(exclude_norm_bias=False, exempt_lr_scale=0.1), lr=1.0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = nn.Linear(3, 3), nn.Linear(3, 1, bias=False)


def test_groups_train_at_their_own_learning_rate_scale():
    net = _Net()
    groups = default_param_groups(net)
    assert [g["name"] for g in groups] == ["backbone", "heads"]
    optimizer = build_optimizer(groups, OptimConfig(lr_scales={"backbone": 0.1}, weight_decay=0.5), lr=2.0)
    apply_schedule(optimizer, lr=1.0, weight_decay=0.5)
    by_name = {(g["name"], g["wd_scale"]): g for g in optimizer.param_groups}
    assert by_name[("backbone", 1.0)]["lr"] == pytest.approx(0.1) and by_name[("heads", 1.0)]["lr"] == 1.0
    assert by_name[("backbone", 0.0)]["weight_decay"] == 0.0 and by_name[("backbone", 1.0)]["weight_decay"] == 0.5
    # One SGD step: the trunk moves a tenth as far as the head for the same gradient.
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    apply_schedule(optimizer, lr=1.0, weight_decay=0.0)
    optimizer.step()
    assert torch.allclose(before["backbone.weight"] - net.backbone.weight, torch.full((3, 3), 0.1))
    assert torch.allclose(before["head.weight"] - net.head.weight, torch.ones(1, 3))
    with pytest.raises(SelfsupError, match="no parameter group 'bakbone' \\(did you mean 'backbone'\\?\\)"):
        build_optimizer(groups, OptimConfig(lr_scales={"bakbone": 0.1}), lr=1.0)


def test_weight_decay_schedule_is_a_cosine_between_its_ends():
    fixed = Schedule(total_steps=100, peak_lr=1.0, weight_decay=0.04)
    assert fixed.weight_decay_at(0) == fixed.weight_decay_at(100) == 0.04
    rising = Schedule(total_steps=100, peak_lr=1.0, weight_decay=0.04, final_weight_decay=0.4)  # DINO
    assert rising.weight_decay_at(0) == pytest.approx(0.04) and rising.weight_decay_at(100) == pytest.approx(0.4)
    assert rising.weight_decay_at(50) == pytest.approx(0.22)
    schedule = Schedule.from_config(OptimConfig(lr=0.1, warmup_epochs=2, min_lr=0.1), 100, 10, batch_size=128)
    assert schedule.peak_lr == pytest.approx(0.05) and schedule.warmup_steps == 20
    assert schedule.lr(100) == pytest.approx(0.005)


def test_lars_step_matches_the_formula():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))             # ||w|| = 5
    bias = nn.Parameter(torch.tensor([1.0]))
    weight.grad, bias.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    optimizer = LARS([{"params": [weight], "weight_decay": 0.1, "lars": True},
                      {"params": [bias], "weight_decay": 0.0, "lars": False}],
                     lr=0.5, momentum=0.9, trust_coefficient=0.01)
    optimizer.step()
    grad = torch.tensor([[0.3, 1.4]])                              # g + wd * w
    trust = 0.01 * 5 / grad.norm()
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0]]) - 0.5 * trust * grad)
    assert torch.allclose(bias, torch.tensor([1.0 - 0.5 * 2.0]))   # plain SGD for exempt groups


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_every_optimiser_lowers_a_quadratic(name):
    model = nn.Linear(3, 1)
    optimizer = build_optimizer([{"name": "all", "params": list(model.parameters())}],
                                OptimConfig(name=name, weight_decay=0.0), 0.1 if name != "lars" else 1.0)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    losses = []
    for _ in range(20):
        loss = (model(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and math.isfinite(losses[-1])
