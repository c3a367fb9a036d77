"""The composite multi-view objective and the transform its inverse-predictive term predicts."""
import math

import pytest
import torch

from selfsup.config import resolve
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.losses import nt_xent
from selfsup.recipes.pretrain import build_model
from selfsup.views import Augment, AugmentSpec, ImageInfo, relative_transform

DATA = {"channels": 1, "image_size": 16, "mean": [0.5], "std": [0.25], "images": 32}


def test_relative_transform_of_known_crops():
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])
    quarter = torch.tensor([[0.5, 0.5, 1.0, 1.0, 1.0]])  # the bottom-right quarter, mirrored
    shift_x, shift_y, log_w, log_h, mirrored = relative_transform(full, quarter)[0].tolist()
    assert (shift_x, shift_y) == pytest.approx((0.25, 0.25))
    assert (log_w, log_h) == pytest.approx((math.log(0.5), math.log(0.5)))
    assert mirrored == 1.0
    assert relative_transform(quarter, quarter).abs().sum() == 0


def test_augment_geometry_reports_the_crop_box_and_the_mirroring():
    info = ImageInfo(16, 1, (0.0,), (1.0,))
    whole = Augment(info, AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, flip_p=0.5),
                    normalize=False)
    ramp = torch.arange(16, dtype=torch.uint8).mul(16).view(1, 1, 1, 16).expand(8, 1, 16, 16).contiguous()
    torch.manual_seed(0)
    views = whole(ramp)
    geometry = whole.geometry()
    assert torch.allclose(geometry[:, :4], torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(8, 4))
    rising = views[:, 0, 0, -1] > views[:, 0, 0, 0]  # a mirrored ramp falls from left to right
    assert torch.equal(geometry[:, 4] == 1.0, ~rising)
    assert 0 < geometry[:, 4].sum() < 8  # both cases drawn
    half = Augment(info, AugmentSpec(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), jitter_p=0.0, flip_p=0.0))
    half(ramp)
    box = half.geometry()
    assert torch.allclose(box[:, 2] - box[:, 0], torch.full((8,), 0.5), atol=1 / 16)
    assert (box[:, 4] == 0).all()
    with pytest.raises(RuntimeError, match="call the augmentation first"):
        Augment(info).geometry()


def _composite(**args):
    torch.manual_seed(0)
    config = resolve({"method": {"name": "composite", "proj_hidden_dim": 32, "proj_dim": 8, **args},
                      "backbone": {"name": "toy", "width": 4}})
    return build_model(config, DATA)


def _views(method):
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return method.views(images)


def test_the_loss_is_the_weighted_sum_of_its_terms_and_the_contrastive_term_is_nt_xent():
    method = _composite(contrastive_weight=2.0, forward_weight=0.5, inverse_weight=3.0)
    views = _views(method)
    assert len(views) == 3 and views[2].shape == (6, 5)
    method.eval()
    with torch.no_grad():
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
        proj_a, proj_b = method.projector(method.backbone(views[0])), method.projector(method.backbone(views[1]))
    terms = {name: out[name].item() for name in ("contrastive", "forward", "inverse")}
    expected = 2 * terms["contrastive"] + 0.5 * terms["forward"] + 3 * terms["inverse"]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["contrastive"].item() == pytest.approx(nt_xent(proj_a, proj_b, 0.5).item(), rel=1e-5)
    assert 0.0 <= out["forward"].item() <= 4.0


@pytest.mark.parametrize("weights", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_each_term_trains_alone_without_the_other_heads(weights):
    method = _composite(contrastive_weight=weights[0], forward_weight=weights[1], inverse_weight=weights[2])
    assert hasattr(method, "forward_predictor") == bool(weights[1])
    assert hasattr(method, "inverse_predictor") == bool(weights[2])
    views = _views(method)
    out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())  # no unused parameter (DDP would refuse them)
    assert set(out) == {"loss", *[n for n, w in zip(("contrastive", "forward", "inverse"), weights) if w]}


def test_bad_weights_are_refused():
    with pytest.raises(SelfsupError, match="at least one > 0"):
        _composite(contrastive_weight=0, forward_weight=0, inverse_weight=0)
    with pytest.raises(SelfsupError, match=">= 0"):
        _composite(forward_weight=-1)
