"""Selfie: the patch grid, what the encoder may see, the loss, the fine-tuning networks, the CLI."""
import json
import math

import pytest
import torch

from selfsup.cli import main
from selfsup.config import resolve
from selfsup.data import DataFacts
from selfsup.engine import Batch
from selfsup.errors import SelfsupError
from selfsup.losses import candidate_nce
from selfsup.models import AttentionPooling, AttentionPoolTrunk
from selfsup.recipes.loading import build_model, load_encoder
from selfsup.views import grid_patches

from conftest import tiny_overrides, write_mnist_folder

DATA = DataFacts.of({"dataset": "toy", "channels": 1, "image_size": 16, "mean": [0.5], "std": [0.25], "images": 32})


def _selfie(**args):
    torch.manual_seed(0)
    return build_model(resolve({"method": {"name": "selfie", **args}, "backbone": {"name": "toy", "width": 8}}), DATA)


def test_grid_patches_cut_side_by_side_or_overlapping_in_row_major_order():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    patches = grid_patches(x, 4)
    assert patches.shape == (2, 16, 1, 4, 4)
    assert torch.equal(patches[1, 6, 0], x[1, 0, 4:8, 8:12])  # row 1, column 2
    overlapping = grid_patches(x, 4, 2)  # CPC: every 2 px -> a 7x7 grid
    assert overlapping.shape == (2, 49, 1, 4, 4)
    assert torch.equal(overlapping[0, 7 + 3, 0], x[0, 0, 2:6, 6:10])


def test_candidate_nce_is_cross_entropy_over_dot_products_within_a_group():
    # Two images; 2 masked patches each. A query equal to one (orthogonal, large) candidate picks it.
    candidates = torch.tensor([[[10.0, 0.0], [0.0, 10.0]], [[0.0, 10.0], [10.0, 0.0]]])
    loss, accuracy = candidate_nce(candidates.clone(), candidates, torch.tensor([[0, 1], [0, 1]]))
    assert accuracy == 1.0 and loss.item() == pytest.approx(math.log(1 + math.exp(-100)), abs=1e-6)
    # By hand: query (1, 0) against (1, 0) and (0, 2) with the second as the answer: log(1 + e^1) - 0.
    loss, accuracy = candidate_nce(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]),
                                   torch.tensor([[1]]))
    assert accuracy == 0.0 and loss.item() == pytest.approx(math.log(math.exp(1) + 1), rel=1e-6)
    # Groups do not see each other: the same queries in one group of four candidates lose more.
    queries = torch.randn(2, 2, 2)
    grouped, _ = candidate_nce(queries, candidates, torch.tensor([[0, 1], [0, 1]]))
    pooled, _ = candidate_nce(queries.view(1, 4, 2), candidates.view(1, 4, 2), torch.tensor([[0, 1, 2, 3]]))
    assert pooled > grouped


def test_grid_defaults_and_what_selfie_refuses():
    method = _selfie()
    assert (method.patch_size, method.grid, method.visible_count) == (4, 4, 12)  # a quarter of 16 px; 75% of 16
    assert not method.positions.row_column  # 16 locations: one embedding each
    assert _selfie(patch_size=2).positions.row_column  # 64 locations: row + column
    with pytest.raises(SelfsupError, match="divide"):
        _selfie(patch_size=5)
    with pytest.raises(SelfsupError, match="two masked"):
        _selfie(visible=0.95)
    with pytest.raises(SelfsupError, match="patch_stage"):
        _selfie(patch_stage="res9")
    with pytest.raises(SelfsupError, match="ResNet"):
        build_model(resolve({"method": {"name": "selfie"}, "backbone": {"name": "vit_tiny"}}), DATA)


def test_the_last_stage_is_not_part_of_p_and_never_trains():
    method = _selfie()
    frozen = {name for name, p in method.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("backbone.stages.res5.") for name in frozen)
    views = method.views(torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8))
    method(Batch(views, torch.full((4,), -1), torch.arange(4)), 0.0)["loss"].backward()
    assert all(p.grad is None for n, p in method.named_parameters() if n.startswith("backbone.stages.res5."))


def test_masked_patches_never_reach_the_encoder():
    """What the pooling network produces does not change when the pixels of the masked patches
    do, in training mode (BatchNorm statistics, dropout with the same draws): the masked patches
    go through P in a pass of their own and never into u."""
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    for query in ("add", "pool"):
        method = _selfie(query=query)
        (view,) = method.views(images)
        pooled = []
        method.pooling.register_forward_hook(lambda module, args, output: pooled.append(output.detach()))
        torch.manual_seed(9)
        method(Batch([view], torch.full((4,), -1), torch.arange(4)), 0.0)
        torch.manual_seed(9)  # forward's first draw is the mask
        masked = torch.rand(4, 16).argsort(1)[:, 12:]
        changed = view.clone()
        for image in range(4):
            for location in masked[image].tolist():
                row, col = divmod(location, 4)
                changed[image, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = torch.randn(1, 4, 4) * 5
        torch.manual_seed(9)
        out = method(Batch([changed], torch.full((4,), -1), torch.arange(4)), 0.0)
        assert torch.equal(pooled[0], pooled[1]), query
        assert not torch.equal(view, changed) and math.isfinite(out["loss"].item())
    # The test can fail: the same pixels changed in a visible patch do change u.
    method = _selfie()
    (view,) = method.views(images)
    pooled = []
    method.pooling.register_forward_hook(lambda module, args, output: pooled.append(output.detach()))
    torch.manual_seed(9)
    visible = torch.rand(4, 16).argsort(1)[:, :12]
    changed = view.clone()
    row, col = divmod(visible[0, 0].item(), 4)
    changed[0, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 3.0
    for batch_view in (view, changed):
        torch.manual_seed(9)
        method(Batch([batch_view], torch.full((4,), -1), torch.arange(4)), 0.0)
    assert not torch.equal(pooled[0], pooled[1])


def test_add_query_gives_u_only_a_bias_per_candidate():
    """The paper's u + position: u . h_k is the same for every query of an image, so swapping two
    queries' positions swaps their logits exactly; the pooled query has no such structure."""
    method = _selfie(dropout=0.0)
    method.eval()
    patches = torch.randn(2, 12, 1, 4, 4)
    masked = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    candidates = torch.randn(2, 4, method.positions.tables[0].shape[1])
    logits = method.queries(patches, masked) @ candidates.transpose(1, 2)
    u_part = logits - method.positions(masked) @ candidates.transpose(1, 2)
    assert torch.allclose(u_part, u_part[:, :1].expand_as(u_part), atol=1e-5)


def test_fine_tuning_networks_p_plus_attention_pooling():
    method = _selfie()
    trunk = method.fine_tune_trunk(1)
    assert isinstance(trunk, AttentionPoolTrunk) and trunk.pooling is method.pooling
    x = torch.randn(3, 1, 16, 16)
    assert trunk(x).shape == (3, trunk.num_features)
    assert not any(p.requires_grad for n, p in trunk.named_parameters() if "res5" in n)
    with pytest.raises(SelfsupError, match="head-layers 1"):
        method.fine_tune_trunk(2)
    pooling = AttentionPooling(32, blocks=1)
    assert pooling.blocks.layers[0].norm_first is False  # BERT: layer norm after the residual
    assert pooling.blocks.layers[0].linear1.out_features == 20  # intermediate 0.625 x hidden


@pytest.fixture(scope="module")
def selfie_run(tmp_path_factory):
    root = write_mnist_folder(tmp_path_factory.mktemp("fm"))
    run = tmp_path_factory.mktemp("selfie") / "run"
    sets = tiny_overrides(root, method__name="selfie", train__epochs=1, eval__features="embedding")
    assert main(["pretrain", "--run-dir", str(run), "--quiet"] + [a for s in sets for a in ("--set", s)]) == 0
    return run


def test_selfie_end_to_end_pretrain_embedding_eval_and_both_fine_tunings(selfie_run, tmp_path, capsys):
    assert main(["eval", "knn", str(selfie_run), "--quiet"]) == 0
    assert "embedding" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert main(["eval", "finetune", str(selfie_run), "--labels", "0.5", "--steps", "3", "--batch-size", "8",
                 "--layer-modes", "res5=retrain", "--run-dir", str(fresh), "--quiet"]) == 0
    pooled = tmp_path / "pooled"
    assert main(["eval", "finetune", str(selfie_run), "--labels", "0.5", "--steps", "3", "--batch-size", "8",
                 "--head-layers", "1", "--run-dir", str(pooled), "--quiet"]) == 0
    assert json.loads((pooled / "summary.json").read_text())["steps"] == 3  # --steps, not epochs
    encoder, config, _ = load_encoder(pooled)
    assert isinstance(encoder, AttentionPoolTrunk) and config.eval.features == "backbone"
    assert main(["eval", "knn", str(pooled), "--quiet"]) == 0  # a classifier evaluates on its trunk
    # P's stages started from the checkpoint (3 steps at a tenth of the rate barely move them);
    # the last stage was re-initialised (res5=retrain, the paper's fresh last block).
    pretrained, _, _ = load_encoder(selfie_run)
    tuned, _, _ = load_encoder(fresh)

    def moved(stage):
        before, after = pretrained.stages[stage][0].weight, tuned.stages[stage][0].weight
        return ((after - before).norm() / before.norm()).item()

    assert moved("conv1") < 0.1 and moved("res5") > 0.5
