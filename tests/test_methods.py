"""Every registered method: a toy backbone, 32 px images (3x3 tiles need them), batch 8, a few steps."""
import math

import pytest
import torch

from selfsup.config import resolve
from selfsup.methods import METHODS, build_method

DATA = {"channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "images": 256}  # bank methods: 256 entries


def _method(name):
    torch.manual_seed(0)
    config = resolve({"method": {"name": name}, "backbone": {"name": "toy", "width": 8}})
    return build_method(config, DATA)


def _batch(size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(size)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_steps_finite_loss_and_gradients_where_expected(name):
    method = _method(name)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    images, index = _batch()
    for step in range(2):
        with torch.no_grad():
            views = method.views(images)
        out = method(views, index)
        assert set(out) >= {"loss"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
        optimizer.zero_grad()
        out["loss"].backward()
        for pname, param in method.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and torch.isfinite(param.grad).all(), pname
            else:
                assert param.grad is None, f"{pname} is frozen (a teacher) but received a gradient"
        optimizer.step()
        method.after_step((step + 1) / 2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_falls_on_a_fixed_batch(name):
    method = _method(name)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    images, index = _batch(16)
    with torch.no_grad():
        views = method.views(images)  # the same views every step: the loss must fall
    losses = []
    for step in range(15):
        loss = method(views, index)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step((step + 1) / 15)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_round_trip_reproduces_outputs(name):
    method = _method(name)
    images, index = _batch()
    with torch.no_grad():
        views = method.views(images)
    method(views, index)["loss"].backward()  # move BN statistics, fill buffers
    method.eval()
    twin = _method(name)
    twin.load_state_dict(method.state_dict())
    twin.eval()
    with torch.no_grad():
        assert torch.allclose(method(views, index)["loss"], twin(views, index)["loss"])
        images = views[0] if views[0].ndim == 4 else views[0].flatten(0, 1)  # tile stacks: every tile
        assert torch.equal(method.backbone(images), twin.backbone(images))


def test_registry_names_are_snake_case_and_documented():
    for name, cls in METHODS.items():
        assert name == name.lower() and " " not in name
        assert cls.__doc__ and "20" in cls.__doc__.splitlines()[0], f"{name}: first docstring line cites the paper"
