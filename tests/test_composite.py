"""The composite multi-view objective (Tsai et al. 2021) and the view transform its optional transform term predicts."""
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.losses import nt_xent
from selfsup.recipes.loading import build_model
from selfsup.views import Augment, AugmentSpec, ImageInfo, relative_transform

DATA = DataFacts.of({"dataset": "toy", "channels": 1, "image_size": 16, "mean": [0.5], "std": [0.25], "images": 32})


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


def test_the_defaults_are_tsai_et_al_s_terms_with_the_reference_weights():
    method = _composite()
    assert method.weights == {"contrastive": 1.0, "forward": 0.001, "inverse": 0.001, "transform": 0.0}
    assert method.forward_target == "pixels" and not hasattr(method, "transform_predictor")


def test_each_term_is_its_formula_and_the_loss_their_weighted_sum():
    method = _composite(contrastive_weight=2.0, forward_weight=0.5, inverse_weight=3.0, transform_weight=0.25)
    views = _views(method)
    assert len(views) == 3 and views[2].shape == (6, 5)
    method.eval()
    with torch.no_grad():
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
        feat_a, feat_b = method.backbone(views[0]), method.backbone(views[1])
        z_a, z_b = F.normalize(feat_a, dim=1), F.normalize(feat_b, dim=1)
        proj_a, proj_b = method.projector(feat_a), method.projector(feat_b)
        # Forward-predictive: each view's z rebuilds the *other* view's pixels (Tsai et al.: Z_X -> S).
        rebuilt_b, rebuilt_a = method.forward_predictor(z_a), method.forward_predictor(z_b)
    assert rebuilt_b.shape == views[1].shape
    terms = {name: out[name].item() for name in ("contrastive", "forward", "inverse", "transform")}
    assert terms["contrastive"] == pytest.approx(nt_xent(proj_a, proj_b, 0.5).item(), rel=1e-5)
    assert terms["forward"] == pytest.approx(((rebuilt_b - views[1]) ** 2).mean().item()
                                             + ((rebuilt_a - views[0]) ** 2).mean().item(), rel=1e-5)
    # Inverse-predictive: the views' representations predict each other, both directions summed.
    assert terms["inverse"] == pytest.approx(2 * ((z_a - z_b) ** 2).mean().item(), rel=1e-5)
    expected = 2 * terms["contrastive"] + 0.5 * terms["forward"] + 3 * terms["inverse"] + 0.25 * terms["transform"]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_the_inverse_term_pulls_the_two_views_representations_together():
    """Tsai et al.'s L_IP discards view-specific information: minimising it alone makes the two
    views of an image map to the same z (the transform head did the opposite: it needs them apart)."""
    method = _composite(contrastive_weight=0, forward_weight=0, inverse_weight=1.0)
    views = _views(method)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["inverse"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_latent_forward_variant_is_a_named_deviation():
    method = _composite(forward_target="latent", contrastive_weight=0, forward_weight=1.0, inverse_weight=0)
    views = _views(method)
    out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
    assert 0.0 <= out["forward"].item() <= 4.0  # 2 - 2 cos, both directions
    with pytest.raises(SelfsupError, match="forward_target is pixels"):
        _composite(forward_target="image")


@pytest.mark.parametrize("weights", [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)])
def test_each_term_trains_alone_without_the_other_heads(weights):
    names = ("contrastive", "forward", "inverse", "transform")
    method = _composite(**{f"{name}_weight": w for name, w in zip(names, weights)})
    assert hasattr(method, "forward_predictor") == bool(weights[1])
    assert hasattr(method, "transform_predictor") == bool(weights[3])
    assert hasattr(method, "projector") == bool(weights[0])
    views = _views(method)
    out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())  # no unused parameter (DDP would refuse them)
    assert set(out) == {"loss", *[n for n, w in zip(names, weights) if w]}


def test_bad_weights_are_refused():
    with pytest.raises(SelfsupError, match="at least one > 0"):
        _composite(contrastive_weight=0, forward_weight=0, inverse_weight=0)
    with pytest.raises(SelfsupError, match=">= 0"):
        _composite(forward_weight=-1)


def test_the_decoder_learns_from_the_whole_error_and_the_encoder_from_its_weight():
    """As the reference: its decoder has an optimiser of its own (Adam ignores the 0.001), while the
    weighted term is what the representation receives."""
    views = None
    grads = {}
    for weight in (1.0, 0.001):
        method = _composite(contrastive_weight=0, forward_weight=weight, inverse_weight=0)
        views = views or _views(method)
        out = method(Batch(views, torch.full((6,), -1), torch.arange(6)), 0.0)
        assert out["loss"].item() == pytest.approx(weight * out["forward"].item(), rel=1e-5)
        out["loss"].backward()
        grads[weight] = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    decoder = [n for n in grads[1.0] if n.startswith("forward_predictor.")]
    encoder = [n for n in grads[1.0] if n.startswith("backbone.") and grads[1.0][n].abs().sum() > 0]
    assert decoder and encoder
    for name in decoder:
        assert torch.allclose(grads[0.001][name], grads[1.0][name], rtol=1e-4, atol=1e-7), name
    for name in encoder:
        assert torch.allclose(grads[0.001][name], 0.001 * grads[1.0][name], rtol=1e-3, atol=1e-9), name
