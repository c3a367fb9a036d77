"""MoCo, BYOL, SimSiam, Barlow Twins: the parts the generic method tests cannot see.

Teachers that take no gradient and stay out of the optimiser, the EMA rule at the right
momentum, MoCo's queue (keys enqueued after the loss, normalised, gathered), v1 vs v2 heads.
"""
import pytest
import torch
import torch.nn.functional as F

from selfsup.blocks import momentum_schedule
from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.engine.optim import split_groups
from selfsup.errors import SelfsupError
from selfsup.losses import info_nce
from selfsup.recipes.loading import build_model

DATA = DataFacts.of({"dataset": "toy", "channels": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "images": 64})


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


def test_moco_symmetric_loss_sums_both_directions_as_the_demo():
    method = _method("moco", queue_size=32, proj_dim=8, symmetric=True)
    views = _views(method)
    queue_before = method.queue.keys.clone()
    method.eval()
    with torch.no_grad():
        q_a, q_b = method.projector(method.backbone(views[0])), method.projector(method.backbone(views[1]))
        k_b, k_a = method.key_encoder(views[1]), method.key_encoder(views[0])
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
    expected = info_nce(q_a, k_b, queue_before, 0.2) + info_nce(q_b, k_a, queue_before, 0.2)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)  # loss_12 + loss_21, not their mean


def test_moco_in_one_process_splits_batchnorm_and_shuffles_the_keys_within_the_batch():
    from selfsup.blocks import SplitBatchNorm2d

    method = _method("moco", queue_size=32, bn_splits=2)
    split = [m for m in method.modules() if isinstance(m, SplitBatchNorm2d)]
    plain = [m for m in method.modules() if type(m) is torch.nn.BatchNorm2d]
    assert split and not plain and all(m.splits == 2 for m in split)  # query and key encoders alike
    seen = []
    method.key_encoder.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    views = _views(method)
    torch.manual_seed(5)
    _step(method, views)
    assert len(seen) == 1 and not torch.equal(seen[0], views[1])  # shuffled ...
    assert torch.equal(seen[0].sort(0).values, views[1].sort(0).values)  # ... the same images
    off = _method("moco", queue_size=32, bn_splits=1)
    assert not any(isinstance(m, SplitBatchNorm2d) for m in off.modules())


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


@pytest.mark.parametrize("name", ["simsiam", "byol", "barlow_twins"])
def test_each_view_has_its_own_pass_and_batchnorm_statistics_unless_asked(name):
    sizes = {}
    for one_pass in (False, True):
        method = _method(name, proj_dim=16, views_in_one_pass=one_pass)
        calls = []
        method.backbone.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
        views = _views(method)
        batch = Batch(views, torch.full((6,), -1), torch.arange(6))
        method.eval()  # with running statistics, how the views are grouped changes nothing
        in_eval = method(batch, 0.0)["loss"].item()
        calls.clear()
        method.train()
        sizes[one_pass] = (method(batch, 0.0)["loss"].item(), list(calls), in_eval)
    assert sizes[False][1] == [6, 6] and sizes[True][1] == [12]  # the official code's passes, or one
    assert sizes[False][0] != pytest.approx(sizes[True][0], rel=1e-4)  # batch statistics per view differ
    assert sizes[False][2] == pytest.approx(sizes[True][2], rel=1e-4)


# ---------------------------------------------------------------- DINO

def _dino(backbone="toy", **args):
    torch.manual_seed(0)
    spec = {"name": backbone} if backbone != "toy" else {"name": "toy", "width": 4}
    config = resolve({"method": {"name": "dino", "out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, **args},
                      "views": {"num_local": 2}, "backbone": spec})
    return build_model(config, DATA)


def test_dino_teacher_sees_the_global_crops_only_and_the_student_every_crop():
    method = _dino()
    views = _views(method, size=3)
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7]
    seen = {"teacher": [], "student": []}
    method.teacher.backbone.register_forward_hook(lambda m, i, o: seen["teacher"].append(tuple(i[0].shape)))
    method.backbone.register_forward_hook(lambda m, i, o: seen["student"].append(tuple(i[0].shape)))
    _step(method, views)
    assert seen["teacher"] == [(6, 3, 16, 16)]                      # both globals, one pass
    assert seen["student"] == [(6, 3, 16, 16), (6, 3, 7, 7)]        # one pass per resolution


def test_dino_center_moves_to_the_teachers_batch_mean_at_its_momentum():
    method = _dino(center_momentum=0.9)
    views = _views(method)
    with torch.no_grad():
        teacher = method.teacher(torch.cat(views[:2]))
    _step(method, views)
    assert torch.allclose(method.center, 0.1 * teacher.mean(0), atol=1e-6)


def test_dino_teacher_temperature_warms_up_linearly_then_stays():
    method = _dino(teacher_temperature=0.07, teacher_temperature_start=0.04, teacher_warmup=0.2)
    assert [round(method.teacher_temperature_at(p), 6) for p in (0.0, 0.1, 0.2, 0.9)] == [0.04, 0.055, 0.07, 0.07]
    assert _dino().teacher_temperature_at(0.0) == 0.04
    with pytest.raises(SelfsupError, match=r"'method.teacher_warmup': must be in \[0, 1\), got 1.5"):
        _dino(teacher_warmup=1.5)


def test_dino_freezes_its_last_layer_for_the_first_epoch_by_name():
    method = _dino()
    assert method.frozen_epochs() == {"head.last_layer": 1.0}
    names = [n for n, _ in method.named_parameters()]
    assert "head.last_layer.weight" in names
    assert _dino(freeze_last_layer=0).frozen_epochs() == {}


def test_dino_last_layer_is_weight_normalised():
    method = _dino()
    with torch.no_grad():
        method.head.last_layer.weight.mul_(5)  # the scale of the rows does not matter
        x = torch.randn(4, method.backbone.num_features)
        before = method.head(x)
        method.head.last_layer.weight.div_(5)
        assert torch.allclose(before, method.head(x), atol=1e-5)


def test_dino_trains_a_vit_with_registers_and_every_token_part_learns():
    method = _dino("vit_tiny", out_dim=16)
    method.backbone.blocks = method.backbone.blocks[:2]  # two blocks: the test is the wiring, not depth
    method.teacher.backbone.blocks = method.teacher.backbone.blocks[:2]
    views = _views(method, size=4)
    _step(method, views)
    assert method.backbone.registers is None  # no registers unless asked
    config = resolve({"method": {"name": "dino", "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8},
                      "views": {"num_local": 2}, "backbone": {"name": "vit_tiny", "registers": 2}})
    torch.manual_seed(0)
    with_registers = build_model(config, DATA)
    index = torch.arange(4)
    out = with_registers(Batch(views, torch.full_like(index, -1), index), 0.0)
    out["loss"].backward()
    assert with_registers.backbone.registers.grad.abs().sum() > 0
    assert with_registers.teacher.backbone.registers.grad is None


def test_dino_last_layer_gain_is_fixed_at_one_or_learnt_from_one():
    fixed = _dino()
    assert fixed.head.last_layer.gain is None  # norm_last_layer: unit-length rows
    learnt = _dino(norm_last_layer=False)
    gain = learnt.head.last_layer.gain
    assert gain is not None and torch.equal(gain, torch.ones_like(gain)) and gain.requires_grad
    with torch.no_grad():  # rows start at unit length (the raw weight's rows were ~0.58 long before)
        x = torch.randn(4, learnt.backbone.num_features)
        z = F.normalize(learnt.head.mlp(x), dim=-1)
        assert torch.allclose(learnt.head(x), z @ F.normalize(learnt.head.last_layer.weight, dim=1).T, atol=1e-6)
    assert "head.last_layer.gain" in dict(learnt.named_parameters())  # frozen with the layer in the first epoch


def test_dino_student_vit_drops_paths_and_its_teacher_never_does():
    config = resolve({"method": {"name": "dino", "out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8},
                      "views": {"num_local": 2}, "backbone": {"name": "vit_tiny", "drop_path": 0.1}})
    torch.manual_seed(0)
    method = build_model(config, DATA)
    rates = [block.drop_path.rate for block in method.backbone.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)  # linear over depth
    assert all(block.drop_path.rate == 0.0 for block in method.teacher.backbone.blocks)
    x = _views(method, size=4)[0]
    method.backbone.train()
    with torch.no_grad():
        torch.manual_seed(1)
        first = method.backbone(x)
        second = method.backbone(x)
        assert not torch.allclose(first, second)  # paths dropped at random in training
        method.backbone.eval()
        assert torch.equal(method.backbone(x), method.backbone(x))
    with pytest.raises(SelfsupError, match="ViT settings"):
        resolve({"backbone": {"name": "resnet18", "drop_path": 0.1}}).backbone.build(3, 16)


def test_dino_is_evaluated_as_its_teacher_unless_asked(tmp_path):
    method = _dino()
    assert method.encoder is method.teacher.backbone and method.network("student") is method.backbone
    assert type(method).network_prefix() == "teacher.backbone"
    moco = _method("moco", queue_size=32)
    assert moco.encoder is moco.backbone and moco.network("teacher") is moco.key_encoder.backbone
    with pytest.raises(SelfsupError, match="has no teacher network"):
        _method("simclr").network("teacher")
    with pytest.raises(SelfsupError, match="eval.network is one of"):
        _method("simclr").network("ema")


def test_per_parameter_clipping_scales_each_gradient_alone():
    from selfsup.engine.steps import clip_each_parameter

    small, large = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    small.grad, large.grad = torch.tensor([0.3, 0.4]), torch.tensor([6.0, 0.0, 8.0])  # norms 0.5 and 10
    total = clip_each_parameter([small, large], 3.0)
    assert total.item() == pytest.approx((0.25 + 100) ** 0.5)  # the norm before clipping, for the log
    assert torch.allclose(small.grad, torch.tensor([0.3, 0.4]))  # under the bound: untouched
    assert torch.allclose(large.grad, torch.tensor([6.0, 0.0, 8.0]) * 3.0 / (10 + 1e-6))
    # A global clip at 3 would have scaled both by 3 / 10.0125.


def test_simsiam_predictor_keeps_the_peak_rate_while_the_rest_follows_the_schedule():
    from selfsup.engine.optim import OptimConfig, apply_schedule, build_optimizer

    method = _method("simsiam", proj_dim=16, pred_hidden_dim=8)
    groups = method.param_groups()
    assert [g["name"] for g in groups] == ["backbone", "projector", "predictor"]
    owned = sum(len(g["params"]) for g in groups)
    assert owned == len(list(method.parameters()))  # every parameter in exactly one group
    optimizer = build_optimizer(groups, OptimConfig(), lr=0.1)
    apply_schedule(optimizer, lr=0.01, weight_decay=0.0, peak_lr=0.1)  # late in the cosine
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {"backbone": 0.01, "projector": 0.01, "predictor": 0.1}
    fixed = _method("simsiam", proj_dim=16, pred_hidden_dim=8, fix_predictor_lr=False)
    optimizer = build_optimizer(fixed.param_groups(), OptimConfig(), lr=0.1)
    apply_schedule(optimizer, lr=0.01, weight_decay=0.0, peak_lr=0.1)
    assert {g["lr"] for g in optimizer.param_groups} == {0.01}
