"""CPC v2: the context's causality, the loss's wiring, layer norm, the CLI and the export of layer-norm ResNets."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.cli import main
from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.export import torchvision_recipe
from selfsup.methods.cpc import RowContext
from selfsup.models import ResNet
from selfsup.recipes.loading import build_model

from conftest import tiny_overrides, write_mnist_folder

DATA = DataFacts.of({"dataset": "toy", "channels": 1, "image_size": 16, "mean": [0.5], "std": [0.25], "images": 32})


def _cpc(**args):
    torch.manual_seed(0)
    return build_model(resolve({"method": {"name": "cpc", **args},
                                "backbone": {"name": "toy", "width": 8, "norm": "layer"}}), DATA)


def test_context_at_a_row_never_sees_the_rows_below():
    torch.manual_seed(0)
    context = RowContext(16, blocks=2)
    z = torch.randn(2, 16, 7, 7)
    for row in range(6):
        changed = z.clone()
        changed[:, :, row + 1:] = torch.randn_like(changed[:, :, row + 1:])
        assert torch.equal(context(z)[:, :, :row + 1], context(changed)[:, :, :row + 1]), row
    # It does see its own row and those above: the test can fail.
    changed = z.clone()
    changed[:, :, 3] += 1.0
    assert not torch.allclose(context(z)[:, :, 3], context(changed)[:, :, 3])
    assert not torch.allclose(context(z)[:, :, 5], context(changed)[:, :, 5])


def test_predicted_patches_share_no_pixel_with_what_the_context_saw():
    """Default geometry: skipping the two nearest rows leaves no pixel of a target patch in the
    patches of its context's rows (the overlapping grid would otherwise hand over half of it)."""
    for size in (16, 28, 32, 96):
        method = build_model(resolve({"method": {"name": "cpc"}, "backbone": {"name": "toy", "norm": "layer"}}),
                             dataclasses.replace(DATA, image_size=size))
        p, s = method.patch_size, method.stride
        for row in range(method.grid):
            seen_until = row * s + p  # pixel rows of the patches in rows 0..row
            for offset in method.offsets:
                if row + offset < method.grid:
                    assert (row + offset) * s >= seen_until, (size, row, offset)


def test_loss_is_infonce_over_the_patches_of_the_group_by_hand():
    method = _cpc(negative_images=2)
    method.eval()
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (view,) = method.views(images)
    with torch.no_grad():
        out = method(Batch([view], torch.full((4,), -1), torch.arange(4)), 0.0)
        z = method.patch_embeddings(view)
        context = method.context(z).permute(0, 2, 3, 1)
        targets = method.to_target(z.permute(0, 2, 3, 1))
    grid, terms, hits = method.grid, [], []
    for group in (0, 1):
        members = [2 * group, 2 * group + 1]
        candidates = torch.stack([targets[b, r, c] for b in members for r in range(grid) for c in range(grid)])
        for k, predictor in zip(method.offsets, method.predictors):
            for local, b in enumerate(members):
                for r in range(grid - k):
                    for c in range(grid):
                        logits = candidates @ (predictor(context[b, r, c]) * method.logit_scale)
                        answer = local * grid * grid + (r + k) * grid + c
                        terms.append(F.cross_entropy(logits[None], torch.tensor([answer])))
                        hits.append(float(logits.argmax() == answer))
    assert out["loss"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert out["accuracy"].item() == pytest.approx(sum(hits) / len(hits))


def test_cpc_refuses_batch_norm_and_grids_too_small_to_predict():
    with pytest.raises(SelfsupError, match="backbone.norm=layer"):
        build_model(resolve({"method": {"name": "cpc"}, "backbone": {"name": "toy"}}), DATA)
    with pytest.raises(SelfsupError, match="no row to predict"):
        _cpc(patch_size=8)
    with pytest.raises(SelfsupError, match="negative_images"):
        _cpc(negative_images=0)
    method = _cpc()
    assert (method.patch_size, method.stride, method.grid, method.offsets) == (4, 2, 7, [3, 4, 5])


def test_layer_norm_resnet_has_no_batch_statistics_and_exports_to_torchvision(tmp_path):
    net = ResNet(18, in_channels=1, small_stem=True, width=8, norm="layer")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.arch["norm"] == "layer" and "norm" not in ResNet(18, width=8).arch  # old arch dicts unchanged
    x = torch.randn(3, 1, 16, 16)
    alone = net(x[:1])
    assert torch.allclose(net(x)[:1], alone, atol=1e-5)  # in training mode: no image sees another
    weights = tmp_path / "w.pt"
    torch.save(net.net.state_dict(), weights)
    namespace: dict = {}
    exec(torchvision_recipe(net.arch, str(weights)), namespace)
    assert torch.allclose(namespace["model"].eval()(x), net.eval()(x), atol=1e-5)
    with pytest.raises(SelfsupError, match="backbone.norm"):
        resolve({"backbone": {"norm": "instance"}}).backbone.build(1, 16)


def test_cpc_end_to_end_pretrain_and_evaluate_its_embedding(tmp_path, capsys):
    root = write_mnist_folder(tmp_path / "fm")
    run = tmp_path / "run"
    sets = tiny_overrides(root, method__name="cpc", backbone__norm="layer", train__epochs=1)
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + [a for s in sets for a in ("--set", s)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] > 0
    assert main(["eval", "knn", str(run), "--features", "embedding", "--quiet"]) == 0
    assert "embedding" in capsys.readouterr().out
    assert main(["eval", "knn", str(run), "--quiet"]) == 0  # the backbone on whole images works too
