"""Evaluating checkpoints: the encoder alone, the method's own embedding, BatchNorm recalibration."""
import json

import pytest
import torch
from torch import nn

from conftest import tiny_config
from selfsup.blocks import MemoryBank
from selfsup.engine import checkpoint
from selfsup.errors import SelfsupError
from selfsup.eval import recalibrate_batchnorm
from selfsup.recipes.evaluate import checkpoint_evaluator
from selfsup.recipes.loading import load_encoder
from selfsup.recipes.pretrain import pretrain
from selfsup.views import EvalView


@pytest.fixture
def npid_run(mnist_root, tmp_path):
    run = tmp_path / "npid"
    pretrain(tiny_config(mnist_root, method__name="npid", method__num_negatives=16, method__feature_dim=8,
                         train__epochs=1, train__knn_every=0), run, quiet=True)
    return run


def test_the_encoder_loads_without_building_heads_or_banks(npid_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("evaluation built a memory bank")

    monkeypatch.setattr(MemoryBank, "__init__", refuse)
    encoder, config, meta = load_encoder(npid_run)
    assert type(encoder).__name__ == "ToyNet" and config.method_name == "npid"
    saved = checkpoint.submodule_weights(meta.weights, "backbone")
    assert set(saved) == set(encoder.state_dict()) and not any("memory" in k or "projector" in k for k in saved)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in saved.items())


def test_knn_on_the_method_embedding_is_an_option(npid_run):
    backbone, _ = checkpoint_evaluator(npid_run, quiet=True)
    embedding, _ = checkpoint_evaluator(npid_run, ["eval.features=embedding"], quiet=True)
    assert backbone.features("test").shape[1] == 32 and embedding.features("test").shape[1] == 8  # toy width 8 x 4
    assert torch.allclose(embedding.features("test").norm(dim=1), torch.ones(32), atol=1e-5)  # NPID's unit v
    assert embedding.name.endswith("embedding)") and embedding.name != backbone.name
    embedding, config = checkpoint_evaluator(npid_run, ["eval.features=embedding"], quiet=True)
    results = embedding.run(["knn"], config.eval)
    assert 0 <= results[embedding.name]["knn"]["top1"] <= 100
    assert embedding.name in json.loads((npid_run / "eval" / "results.json").read_text())


def test_methods_without_an_embedding_say_so(mnist_root, tmp_path):
    from selfsup.errors import SelfsupError

    pretrain(tiny_config(mnist_root, method__name="rotation", train__epochs=1, train__knn_every=0), tmp_path,
             quiet=True)
    with pytest.raises(SelfsupError, match="rotation has no embedding of its own; use eval.features=backbone"):
        checkpoint_evaluator(tmp_path, ["eval.features=embedding"], quiet=True)


def test_recalibration_replaces_statistics_by_those_of_the_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    norm = net[1]
    norm.running_mean.fill_(7.0)  # statistics of other inputs (tiles, say)
    norm.running_var.fill_(9.0)
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    view = EvalView(8, (0.5,), (0.25,))
    assert recalibrate_batchnorm(net, images, view, count=50, batch_size=16) == 1
    with torch.no_grad():
        activations = net[0](view(images)).transpose(0, 1).flatten(1)  # (channels, all positions)
    # A cumulative average over the batches (momentum None): per-batch means averaged with equal weight,
    # which for equal batches is the mean; the last batch of 2 is weighted alike, so compare loosely.
    assert torch.allclose(norm.running_mean, activations.mean(1), atol=0.05)
    assert torch.allclose(norm.running_var, activations.var(1), rtol=0.1)
    assert not net.training and norm.momentum == 0.1  # left in eval mode, momentum restored


@pytest.mark.parametrize("method, settings, norm", [
    ("jigsaw", {"data__image_size": 30}, "backbone.stages.res5.1.running_mean"),
    # Selfie's P trains on 4 px patches here: its res4 statistics are patch statistics.
    ("selfie", {"backbone__name": "resnet18", "eval__features": "embedding"}, "backbone.net.layer3.1.bn2.running_mean"),
])
def test_tile_methods_are_recalibrated_by_default(mnist_root, tmp_path, method, settings, norm):
    pretrain(tiny_config(mnist_root, method__name=method, train__epochs=1, train__knn_every=0, **settings),
             tmp_path / "tiles", quiet=True)
    tiles, config = checkpoint_evaluator(tmp_path / "tiles", quiet=True)
    assert tiles.recalibrate == config.eval.bn_recalibration_images == 10000
    stats_before = checkpoint.load(tmp_path / "tiles")["model"][norm]
    result = tiles.run(["knn"], config.eval)[tiles.name]["knn"]
    assert "BN recalibrated on 80 train images" in result["settings"]  # all there are
    encoder = getattr(tiles.encoder, "backbone", tiles.encoder)
    assert not torch.equal(encoder.get_submodule(norm.removeprefix("backbone.").rsplit(".", 1)[0]).running_mean,
                           stats_before)
    off, _ = checkpoint_evaluator(tmp_path / "tiles", ["eval.bn_recalibration=false"], quiet=True)
    assert off.recalibrate == 0
    pretrain(tiny_config(mnist_root, train__epochs=1, train__knn_every=0), tmp_path / "simclr", quiet=True)
    assert checkpoint_evaluator(tmp_path / "simclr", quiet=True)[0].recalibrate == 0  # trained on full images


def test_dino_checkpoints_are_evaluated_and_exported_as_their_teacher(mnist_root, tmp_path):
    run = tmp_path / "dino"
    pretrain(tiny_config(mnist_root, method__name="dino", method__out_dim=32, method__hidden_dim=16,
                         method__bottleneck_dim=8, views__num_local=2, backbone__name="resnet18", train__epochs=1,
                         train__knn_every=0),
             run, quiet=True)
    weights = checkpoint.load(run)["model"]
    teacher, _, meta = load_encoder(run)
    assert meta.encoder.network == "teacher"
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, weights[f"teacher.backbone.{name}"]), name
    student, _, meta = load_encoder(run, ["eval.network=student"])
    assert meta.encoder.network == "student"
    assert all(torch.equal(v, weights[f"backbone.{k}"]) for k, v in student.state_dict().items())
    assert any(not torch.equal(weights[f"backbone.{k}"], weights[f"teacher.backbone.{k}"])
               for k in student.state_dict() if weights[f"backbone.{k}"].is_floating_point())
    evaluator, _ = checkpoint_evaluator(run, quiet=True)
    assert evaluator.name == f"dino (last, step {meta.step}, teacher)"
    # Each network its own feature cache: the student's features are never read back as the teacher's.
    teacher_knn = evaluator.run(["knn"], evaluator_config(run))[evaluator.name]["knn"]["top1"]
    student_eval, _ = checkpoint_evaluator(run, ["eval.network=student"], quiet=True)
    assert torch.equal(student_eval.features("test"), extract(student, student_eval))
    assert torch.equal(evaluator.features("test"), extract(teacher, evaluator)) and 0 <= teacher_knn <= 100
    assert checkpoint_evaluator(run, ["eval.network=student"], quiet=True)[0].name == f"dino (last, step {meta.step})"
    from selfsup.export import export_backbone

    card = export_backbone(run, tmp_path / "dino.safetensors", quiet=True)
    assert card["provenance"]["network"] == "teacher"
    assert export_backbone(run, tmp_path / "student.safetensors", network="student",
                           quiet=True)["provenance"]["network"] == "student"
    with pytest.raises(SelfsupError, match="has no teacher network"):
        load_encoder(pretrain_simclr(mnist_root, tmp_path), ["eval.network=teacher"])


def pretrain_simclr(mnist_root, tmp_path):
    pretrain(tiny_config(mnist_root, train__epochs=1, train__knn_every=0), tmp_path / "simclr", quiet=True)
    return tmp_path / "simclr"


def evaluator_config(run):
    from selfsup.recipes.loading import load_checkpoint_config

    return load_checkpoint_config(run)[0].eval


def extract(encoder, evaluator):
    """The features ``evaluator`` should compute for ``encoder``: in its precision and layout (bf16 on a
    CPU with native bf16), so that the comparison holds on every machine."""
    from selfsup.eval import extract_features

    return extract_features(encoder.eval(), evaluator.test.images, evaluator.view, batch_size=512,
                            autocast_dtype=evaluator.precision.dtype, channels_last=evaluator.channels_last)


def test_a_dino_vit_read_back_drops_no_paths(mnist_root, tmp_path):
    run = tmp_path / "dino-vit"
    pretrain(tiny_config(mnist_root, method__name="dino", method__out_dim=32, method__hidden_dim=16,
                         method__bottleneck_dim=8, views__num_local=2, backbone__name="vit_tiny",
                         backbone__width=64, backbone__drop_path=0.1, train__epochs=1, train__max_steps=1, train__knn_every=0,
                         train__online_probe=False), run, quiet=True)
    encoder, config, _ = load_encoder(run)
    assert config.backbone.drop_path == 0.0
    assert all(block.drop_path.rate == 0.0 for block in encoder.blocks)  # frozen-trunk probes see fixed features
