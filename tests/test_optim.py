import math

import pytest
import torch
from torch import nn

from selfsup.optim import LARS, build_optimizer, cosine_schedule, param_groups, scaled_lr


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
    decayed, exempt = param_groups(model, 0.1)
    assert len(decayed["params"]) == 2 and decayed["weight_decay"] == 0.1 and decayed["lars"]
    assert len(exempt["params"]) == 4 and exempt["weight_decay"] == 0.0 and not exempt["lars"]
    assert len(param_groups(model, 0.1, exclude_norm_bias=False)) == 1


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
    optimizer = build_optimizer(model, name, 0.1 if name != "lars" else 1.0, weight_decay=0.0)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    losses = []
    for _ in range(20):
        loss = (model(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and math.isfinite(losses[-1])
