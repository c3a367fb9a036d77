"""Every registered method: a toy backbone, 32 px images (3x3 tiles need them), batch 8, a few steps."""
import math

import pytest
import torch

from selfsup.blocks import FeatureQueue
from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.methods import METHODS
from selfsup.recipes.loading import build_model

DATA = DataFacts.of({"dataset": "toy", "channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                     "images": 256})  # bank methods: 256 entries


#: Smaller heads and queues than the papers' defaults, where those would dominate a toy step.
SMALL = {"barlow_twins": {"proj_dim": 512}, "byol": {"proj_hidden_dim": 512, "pred_hidden_dim": 512},
         "moco": {"queue_size": 1024}, "simsiam": {"proj_dim": 512}, "dino": {"out_dim": 256, "hidden_dim": 128},
         "composite": {"proj_hidden_dim": 128},
         # Logits scaled for real networks are tiny on a toy: plain SGD needs larger ones to move in 15 steps.
         "cpc": {"logit_scale": 0.3}, "selfie": {"scaled_logits": False}}


#: Methods that need another backbone than the toy ResNet.
BACKBONE = {"maskfeat": {"name": "vit_tiny"}, "cpc": {"name": "toy", "width": 8, "norm": "layer"}}


def _method(name):
    torch.manual_seed(0)
    config = resolve({"method": {"name": name, **SMALL.get(name, {})},
                      "backbone": BACKBONE.get(name, {"name": "toy", "width": 8})})
    return build_model(config, DATA)


def _batch(size=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(size)


def _run(method, views, index, progress=0.0):
    return method(Batch(views, torch.full_like(index, -1), index), progress)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_steps_finite_loss_and_gradients_where_expected(name):
    method = _method(name)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    images, index = _batch()
    for step in range(2):
        with torch.no_grad():
            views = method.views(images)
        out = _run(method, views, index, step / 2)
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
    # Targets that follow the batch move the goal on a fixed batch, as they should: a queue fills
    # with this batch's own keys (MoCo's loss rises), DINO's center drifts to the batch mean.
    # Hold them fixed: what is under test is that the gradients lower the loss.
    moving = [(q, {k: v.clone() for k, v in q.state_dict().items()}) for q in method.modules()
              if isinstance(q, FeatureQueue)]
    if hasattr(method, "center"):
        moving.append((method, {"center": method.center.clone()}))
    losses = []
    for step in range(15):
        for module, state in moving:
            module.load_state_dict(state, strict=False)
        torch.manual_seed(3)  # the same draws inside forward every step (masks, negatives): a fixed task
        loss = _run(method, views, index, step / 15)["loss"]
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
    _run(method, views, index)["loss"].backward()  # move BN statistics, fill buffers
    method.eval()
    twin = _method(name)
    twin.load_state_dict(method.state_dict())
    twin.eval()
    with torch.no_grad():
        # The same random draws inside forward for both (MaskFeat's mask, samplers on the global RNG).
        torch.manual_seed(7)
        loss = _run(method, views, index)["loss"]
        torch.manual_seed(7)
        assert torch.allclose(loss, _run(twin, views, index)["loss"])
        images = views[0] if views[0].ndim == 4 else views[0].flatten(0, 1)  # tile stacks: every tile
        assert torch.equal(method.backbone(images), twin.backbone(images))


def test_multitask_tasks_share_one_trunk_stored_once():
    """Each task is the registered method on the trunk the multi-task method owns: one set of backbone
    weights in the checkpoint, one trunk trained by every task's loss."""
    method = _method("multitask")
    assert all(head.backbone is method.backbone for head in method.heads.values())
    keys = method.state_dict().keys()
    assert any(k.startswith("backbone.") for k in keys) and not any(".backbone." in k for k in keys)
    assert not any(k.startswith("views.tasks.") and ".views." in k for k in keys)


def test_a_task_that_changes_its_trunk_changes_the_shared_one():
    """MoCo's split BatchNorm, as a task, splits the shared trunk (documented); bn_splits 1 keeps it plain."""
    from selfsup.blocks.split_bn import SplitBatchNorm2d

    def split_layers(bn_splits):
        torch.manual_seed(0)
        config = resolve({"method": {"name": "multitask", "tasks": {"rotation": 1.0, "moco": 1.0},
                                     "task_args": {"moco": {"queue_size": 64, "bn_splits": bn_splits}}},
                          "backbone": {"name": "toy", "width": 8}})
        method = build_model(config, DATA)
        assert method.heads["moco"].backbone is method.backbone is method.heads["rotation"].backbone
        return sum(isinstance(m, SplitBatchNorm2d) for m in method.backbone.modules())

    assert split_layers(2) > 0 and split_layers(1) == 0


def test_registry_names_are_snake_case_and_documented():
    for name, cls in METHODS.items():
        assert name == name.lower() and " " not in name
        assert cls.__doc__ and "20" in cls.__doc__.splitlines()[0], f"{name}: first docstring line cites the paper"


class _FirstPixels(torch.nn.Module):
    """A 'backbone' whose features are the first two pixels: losses become hand-checkable."""

    num_features = 2

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.flatten(1)[:, :2]


def test_counting_loss_is_the_paper_formula():
    from selfsup.methods import Counting

    method = Counting(_FirstPixels(), torch.nn.Identity(), count_dim=2, margin=10.0)
    with torch.no_grad():
        method.counter[0].weight.copy_(torch.eye(2))
        method.counter[0].bias.zero_()
    # Image 0: phi(D x) = (1, 2), tiles (0.5, 0.5) x 4 -> sum (2, 2). Image 1: phi(D y) = (3, 0), tiles sum (3, 0).
    down = torch.zeros(2, 1, 2, 2)
    down[0].view(-1)[:2] = torch.tensor([1.0, 2.0])
    down[1].view(-1)[:2] = torch.tensor([3.0, 0.0])
    tiles = torch.zeros(2, 4, 1, 2, 2)
    tiles[0, :, 0, 0, :2] = 0.5
    tiles[1, :, 0, 0, :2] = torch.tensor([0.75, 0.0])
    loss = _run(method, [down, tiles], torch.arange(2))["loss"]
    # match: ||(1,2)-(2,2)||^2 = 1 and 0; contrast (other = the previous image, rolled):
    # image 0 vs phi(D y)=(3,0): max(0, 10 - ||(3,0)-(2,2)||^2) = 5; image 1 vs (1,2): max(0, 10 - 8) = 2.
    assert loss.item() == pytest.approx(((1 + 5) + (0 + 2)) / 2)


def test_pirl_loss_weighs_its_two_nce_terms_by_lambda():
    torch.manual_seed(0)
    config = resolve({"method": {"name": "pirl", "loss_lambda": 0.3, "num_negatives": 32},
                      "views": {"transform": "rotation"}, "backbone": {"name": "toy", "width": 8}})
    method = build_model(config, DATA).eval()
    images, index = _batch()
    with torch.no_grad():
        views = method.views(images)
        generator_state = method.memory.generator.get_state()
        total = _run(method, views, index)["loss"]
        method.memory.generator.set_state(generator_state)
        negatives = method.memory.sample_negatives()
        v_image = torch.nn.functional.normalize(method.f(method.backbone(views[0])), dim=1)
        v_rotated = torch.nn.functional.normalize(method.g_input(method.backbone(views[1])), dim=1)
        expected = 0.3 * method.memory.nce(v_rotated, index, negatives) + 0.7 * method.memory.nce(v_image, index,
                                                                                                  negatives)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def _decoupled(variant, **args):
    torch.manual_seed(0)
    config = resolve({"method": {"name": "decoupled_rotnet", "variant": variant, "num_negatives": 16, **args},
                      "backbone": {"name": "toy", "width": 8}})
    return build_model(config, DATA)


def test_decoupled_rotnet_paper_variant_splits_the_feature():
    method = _decoupled("paper")
    features = method.backbone.num_features  # 32: the rotation half and the rotation-irrelevant half
    assert method.classifier[0].in_features == features // 2 and method.projector.in_features == features // 2
    images, index = _batch()
    with torch.no_grad():
        views = method.views(images)
    seen = []
    method.classifier.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    out = _run(method, views, index)
    assert {"pu_loss", "rotation_loss", "instance_loss"} <= set(out)
    with torch.no_grad():
        assert torch.allclose(seen[0], method.backbone(views[0])[:, :features // 2], atol=1e-6)  # the first half only


def test_decoupled_rotnet_weights_rotated_copies_by_how_upright_they_look_late_in_training():
    method = _decoupled("paper", weighting_start=0.5, gamma=2.0)
    images, index = _batch()
    with torch.no_grad():
        views = method.views(images)
        # A PU head that calls every copy exactly as upright as its original: p = 1 -> weight 0 for
        # the rotated copies, so only the upright copies (weight 1) count.
        method.pu_head.weight.zero_()
        method.pu_head.bias.fill_(1.0)
        labels = views[1]
        per_copy = torch.nn.functional.cross_entropy(method.classifier(method.backbone(views[0])[:, :16]), labels,
                                                     reduction="none")
        early = _run(method, views, index, progress=0.25)["rotation_loss"]
        late = _run(method, views, index, progress=0.75)["rotation_loss"]
    assert early.item() == pytest.approx(per_copy.mean().item(), rel=1e-5)  # before weighting_start: plain mean
    upright_only = (per_copy * (labels == 0)).sum() / len(labels)
    assert late.item() == pytest.approx(upright_only.item(), rel=1e-5)


def test_decoupled_rotnet_distance_loss_is_the_mse_to_the_stop_gradient_mean():
    method = _decoupled("paper", distance_weight=1.0)
    images, index = _batch()
    with torch.no_grad():
        views = method.views(images)
    half = method.backbone(views[0])[:, 16:].view(4, len(index), -1)
    expected = (half - half.mean(0, keepdim=True)).square().mean()
    out = _run(method, views, index)
    parts = out["loss"] - out["rotation_loss"] - out["instance_loss"] - out["pu_loss"]
    assert parts.item() == pytest.approx(expected.item(), rel=1e-4)


def test_decoupled_rotnet_online_variant_is_kept():
    method = _decoupled("online")
    assert method.classifier[0].in_features == method.backbone.num_features and method.pu_head is None
    images, index = _batch()
    with torch.no_grad():
        views = method.views(images)
    assert math.isfinite(_run(method, views, index)["loss"].item())
