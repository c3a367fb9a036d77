"""MoCo, BYOL, SimSiam, Barlow Twins: the parts the generic method tests cannot see.

Teachers that take no gradient and stay out of the optimiser, the EMA rule at the right
momentum, MoCo's queue (keys enqueued after the loss, normalised, gathered), v1 vs v2 heads.
"""
import pytest
import torch
import torch.nn.functional as F

from selfsup.blocks import momentum_schedule
from selfsup.config import resolve
from selfsup.engine import Batch
from selfsup.engine.optim import split_groups
from selfsup.losses import info_nce
from selfsup.recipes.pretrain import build_model

DATA = {"channels": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "images": 64}


def _method(name, **args):
    torch.manual_seed(0)
    return build_model(resolve({"method": {"name": name, **args}, "backbone": {"name": "toy", "width": 4}}), DATA)


def _views(method, size=6):
    images = torch.randint(0, 256, (size, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return method.views(images)


def _step(method, views, progress=0.0, lr=0.5):
    """One SGD step and the method's after_step, as the engine does it."""
    params = [p for group in split_groups(method.param_groups(), {}) for p in group["params"]]
    optimizer = torch.optim.SGD(params, lr=lr)
    index = torch.arange(len(views[0]))
    out = method(Batch(views, torch.full_like(index, -1), index), progress)
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    method.after_step(progress)
    return out


@pytest.mark.parametrize("name,teacher", [("moco", "key_encoder"), ("byol", "target")])
def test_teachers_take_no_gradient_and_are_not_optimised(name, teacher):
    method = _method(name, **({"queue_size": 32} if name == "moco" else {"proj_hidden_dim": 32, "pred_hidden_dim": 32}))
    teacher_params = {id(p) for p in getattr(method, teacher).parameters()}
    optimised = {id(p) for group in split_groups(method.param_groups(), {}) for p in group["params"]}
    assert teacher_params and not teacher_params & optimised
    _step(method, _views(method))
    assert all(p.grad is None for p in getattr(method, teacher).parameters())


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_moco_key_encoder_follows_the_query_encoder_at_momentum_m_after_the_step():
    method = _method("moco", queue_size=32, momentum=0.9)
    keys_before = _snapshot(method.key_encoder)
    _step(method, _views(method))
    online = {**{f"backbone.{k}": v for k, v in _snapshot(method.backbone).items()},
              **{f"head.{k}": v for k, v in _snapshot(method.projector).items()}}
    for name, param in method.key_encoder.named_parameters():
        assert torch.allclose(param, 0.9 * keys_before[name] + 0.1 * online[name], atol=1e-6), name


def test_moco_loss_uses_the_queue_before_the_batch_enqueues_its_normalised_keys():
    method = _method("moco", queue_size=32, proj_dim=8)
    views = _views(method)
    queue_before = method.queue.keys.clone()
    method.eval()  # fixed BatchNorm: the encoders can be re-run to get the same outputs
    with torch.no_grad():
        query = method.projector(method.backbone(views[0]))
        key = F.normalize(method.key_encoder(views[1]), dim=1)
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
    assert out["loss"].item() == pytest.approx(info_nce(query, key, queue_before, 0.2).item(), rel=1e-5)
    assert torch.allclose(method.queue.keys[:6], key, atol=1e-6)
    assert torch.equal(method.queue.keys[6:], queue_before[6:])
    assert int(method.queue.pointer) == 6


def test_moco_symmetric_enqueues_both_directions_keys():
    method = _method("moco", queue_size=32, symmetric=True)
    _step(method, _views(method))
    assert int(method.queue.pointer) == 12 and int(method.queue.filled) == 12


def test_moco_versions_set_head_and_temperature():
    v1, v2 = _method("moco", version=1, queue_size=8), _method("moco", queue_size=8)
    assert isinstance(v1.projector, torch.nn.Linear) and v1.temperature == 0.07
    assert isinstance(v2.projector, torch.nn.Sequential) and v2.temperature == 0.2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in v2.projector.modules())  # v2's head has no BN
    assert _method("moco", version=1, temperature=0.1, queue_size=8).temperature == 0.1
    with pytest.raises(ValueError, match="version"):
        _method("moco", version=3)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_byol_target_moves_at_the_cosine_momentum_of_the_progress(progress):
    method = _method("byol", proj_hidden_dim=16, pred_hidden_dim=16)
    _step(method, _views(method), 0.0)  # make online and target differ
    target_before = _snapshot(method.target)
    _step(method, _views(method), progress)
    m = momentum_schedule(progress, 0.996)
    online = {**{f"backbone.{k}": v for k, v in _snapshot(method.backbone).items()},
              **{f"head.{k}": v for k, v in _snapshot(method.projector).items()}}
    for name, param in method.target.named_parameters():
        assert torch.allclose(param, m * target_before[name] + (1 - m) * online[name], atol=1e-6), name
    if progress == 1.0:  # m = 1: the target stands still
        assert all(torch.equal(p, target_before[n]) for n, p in method.target.named_parameters())


def test_byol_loss_lies_between_zero_and_eight_and_reports_the_momentum():
    method = _method("byol", proj_hidden_dim=16, pred_hidden_dim=16)
    out = _step(method, _views(method), 0.25)
    assert 0.0 <= out["loss"].item() <= 8.0
    assert out["momentum"].item() == pytest.approx(momentum_schedule(0.25, 0.996))


def test_simsiam_collapse_monitor_reads_zero_for_a_collapsed_projection():
    method = _method("simsiam", proj_dim=16, pred_hidden_dim=8)
    views = _views(method)
    healthy = _step(method, views)["output_std"].item()
    assert 0.0 < healthy <= 1.0
    with torch.no_grad():  # a constant projection: every image maps to the same vector
        last = method.projector[-2]
        last.weight.zero_()
    collapsed = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)["output_std"].item()
    assert collapsed < 1e-3 < healthy


def test_barlow_twins_loss_is_its_formula_on_the_projections():
    from selfsup.losses import barlow_twins

    method = _method("barlow_twins", proj_dim=16, off_diagonal_weight=0.01)
    views = _views(method)
    method.eval()
    with torch.no_grad():
        a, b = method.projector(method.backbone(views[0])), method.projector(method.backbone(views[1]))
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
    assert out["loss"].item() == pytest.approx(barlow_twins(a, b, 0.01).item(), rel=1e-4)
