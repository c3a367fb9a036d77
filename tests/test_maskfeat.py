"""MaskFeat: masking, the targets it regresses, and what it refuses."""
import pytest
import torch
import torch.nn.functional as F

from selfsup.blocks import patch_targets
from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.recipes.loading import build_model

DATA = DataFacts.of({"dataset": "toy", "channels": 1, "image_size": 16, "mean": [0.5], "std": [0.25], "images": 32})


def _maskfeat(**args):
    torch.manual_seed(0)
    config = resolve({"method": {"name": "maskfeat", **args}, "backbone": {"name": "vit_tiny"}})
    method = build_model(config, DATA)
    method.backbone.blocks = method.backbone.blocks[:2]  # the wiring is under test, not the depth
    return method


def test_random_mask_hides_the_same_share_of_every_image():
    method = _maskfeat(mask_ratio=0.4)
    mask = method.random_mask(5, 16, torch.device("cpu"))
    assert mask.shape == (5, 16) and (mask.sum(1) == round(0.4 * 16)).all()
    assert not torch.equal(mask[0], mask[1])  # positions differ between images


def test_loss_is_the_mse_between_the_head_on_masked_tokens_and_their_hog():
    method = _maskfeat()
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (view,) = method.views(images)
    assert method.hog_cell == 4 and method.head.out_features == 9  # 4 px patches: one cell of 9 bins each
    torch.manual_seed(5)
    out = method(Batch([view], torch.full((3,), -1), torch.arange(3)), 0.0)
    torch.manual_seed(5)  # the same mask again
    mask = method.random_mask(3, 16, view.device)
    tokens = method.backbone.forward_tokens(view, mask=mask, mask_token=method.mask_token)[:, 1:]
    expected = F.mse_loss(method.head(tokens[mask]), patch_targets(view, 4, 4)[mask])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["masked"].item() == pytest.approx(6 / 16)


def test_mask_token_replaces_the_masked_patches_and_learns():
    method = _maskfeat()
    x = torch.randn(2, 1, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 3] = True
    plain = method.backbone.forward_tokens(x)
    masked = method.backbone.forward_tokens(x, mask=mask, mask_token=method.mask_token)
    assert not torch.allclose(plain, masked)
    x_changed = x.clone()
    x_changed[:, :, 0:4, 12:16] += 5.0  # patch 3 (row 0, column 3) only: hidden behind the mask
    assert torch.allclose(masked, method.backbone.forward_tokens(x_changed, mask=mask, mask_token=method.mask_token))
    (view,) = method.views(torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8))
    method(Batch([view], torch.full((2,), -1), torch.arange(2)), 0.0)["loss"].backward()
    assert method.mask_token.grad.abs().sum() > 0


def test_maskfeat_refuses_a_resnet_and_bad_settings():
    with pytest.raises(SelfsupError, match="masks ViT patches"):
        build_model(resolve({"method": {"name": "maskfeat"}, "backbone": {"name": "toy", "width": 4}}), DATA)
    with pytest.raises(SelfsupError, match="mask_ratio"):
        _maskfeat(mask_ratio=1.0)
    with pytest.raises(SelfsupError, match="must divide the patch"):
        _maskfeat(hog_cell=3)
