"""The classifier-training recipe: an encoder plus a linear head on labels, with a trunk learning
rate scale, a frozen-trunk head warm-up followed by joint training in one fit, and test accuracy."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from selfsup.data import DataConfig, load_splits
from selfsup.engine import Batch, OptimConfig, checkpoint
from selfsup.errors import SelfsupError
from selfsup.learners import Classifier, classifier_views
from selfsup.models import build_backbone
from selfsup.recipes import ClassifierTraining, fit_classifier
from selfsup.views import ImageInfo


def _setup(root, **settings):
    splits = load_splits(DataConfig(root=str(root)), labeled=True, quiet=True)
    torch.manual_seed(0)
    encoder = build_backbone("toy", 1, 16, width=8)
    mean, std = splits.train.stats()
    model = Classifier(encoder, len(splits.train.classes), classifier_views(ImageInfo(16, 1, mean, std)))
    defaults = dict(epochs=2, batch_size=16, device="cpu", precision="fp32", log_every=1,
                    optim=OptimConfig(lr=0.2, weight_decay=0.0, warmup_epochs=0.0))
    return model, splits, ClassifierTraining(**{**defaults, **settings})


def _trunk(model):
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


def test_head_warm_up_keeps_the_trunk_then_joint_training_moves_it(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, epochs=1, head_warmup_epochs=1)
    trunk, head = _trunk(model), model.head.weight.detach().clone()
    fit_classifier(model, splits.train, splits.test, tmp_path / "warmup", settings, quiet=True)
    assert all(torch.equal(v, trunk[k]) for k, v in model.encoder.state_dict().items())  # BN statistics too
    assert not torch.equal(model.head.weight, head)

    model, splits, settings = _setup(mnist_root, epochs=2, head_warmup_epochs=1)
    trunk = _trunk(model)
    fit_classifier(model, splits.train, splits.test, tmp_path / "joint", settings, quiet=True)
    assert not torch.equal(model.encoder.state_dict()["stages.conv1.0.weight"], trunk["stages.conv1.0.weight"])
    rows = [json.loads(line) for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["stream"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(0 <= r["test_top1"] <= 100 for r in epochs)
    state = checkpoint.load(tmp_path / "joint")
    assert state["training"]["epochs"] == 2 and state["best_name"] == "loss"  # test accuracy never picks best.pt


def test_trunk_trains_at_a_tenth_of_the_head_rate_by_default(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, epochs=1)
    assert settings.backbone_lr_scale == 0.1
    fit_classifier(model, splits.train, splits.test, tmp_path, settings, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(0.2 * 16 / 256)  # the head's rate: per 256 images, scaled
    # The optimiser state after the fit tells each group's last rate apart: read them from the checkpoint.
    groups = checkpoint.load(tmp_path)["optimizer"]["param_groups"]
    scales = {(g["name"], g["wd_scale"]): g["lr_scale"] for g in groups}
    assert scales[("backbone", 1.0)] == pytest.approx(0.1) and scales[("head", 1.0)] == 1.0


def test_a_zero_trunk_rate_is_a_linear_probe_and_it_learns(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, epochs=4, backbone_lr_scale=0.0)
    trunk = _trunk(model)
    fit_classifier(model, splits.train, splits.test, tmp_path, settings, quiet=True)
    assert all(torch.equal(v, trunk[k]) for k, v in model.encoder.state_dict().items())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stream"] == "epoch"]
    assert losses[-1] < losses[0]


def test_too_few_labels_for_a_batch_is_refused(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, batch_size=512)
    with pytest.raises(SelfsupError, match="80 labelled training images are fewer than a batch of 512"):
        fit_classifier(model, splits.train, splits.test, tmp_path, settings, quiet=True)


def test_transfer_modes_per_stage_freeze_fine_tune_and_retrain(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, epochs=1, layer_modes={"conv1": "frozen", "res5": "retrain"})
    before = _trunk(model)
    fit_classifier(model, splits.train, splits.test, tmp_path, settings, quiet=True)
    after = model.encoder.state_dict()
    frozen = [k for k in before if k.startswith("stages.conv1.")]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # weights and BN statistics
    assert not torch.equal(after["stages.res2.0.weight"], before["stages.res2.0.weight"])
    groups = checkpoint.load(tmp_path)["optimizer"]["param_groups"]
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert "backbone.conv1" not in scales  # not in the optimiser at all
    assert scales["backbone.res2"] == pytest.approx(0.1) and scales["backbone.res5"] == 1.0


def test_retrained_stages_start_from_fresh_weights(mnist_root):
    from selfsup.recipes.classifier import stage_groups

    model, _, _ = _setup(mnist_root)
    before = _trunk(model)
    groups, frozen = stage_groups(model, model.param_groups(), {"res5": "retrain", "res4": "frozen"}, 0.1)
    after = model.encoder.state_dict()
    assert not torch.equal(after["stages.res5.0.weight"], before["stages.res5.0.weight"])
    assert torch.equal(after["stages.res4.0.weight"], before["stages.res4.0.weight"])
    assert frozen == ["encoder.stages.res4."] and {g["name"] for g in groups} >= {"head", "backbone.res5"}
    for modes, message in (({"fc7": "frozen"}, "no stage 'fc7'; this trunk has conv1, res2"),
                           ({"res5": "thaw"}, "unknown mode 'thaw'; use frozen, finetune, retrain")):
        with pytest.raises(SelfsupError, match=message):
            stage_groups(model, model.param_groups(), modes, 0.1)


def test_label_smoothing_is_distillation_from_a_uniform_teacher():
    """eps * KL(uniform || p) + (1 - eps) * CE(y, p) = torch's label-smoothed CE - eps * log K."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(3, 4)
    encoder.num_features = 4
    model = Classifier(encoder, 5, torch.nn.Identity(), label_smoothing=0.2)
    x, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 4, -1])
    loss = model(Batch([x], targets, torch.arange(6)), 0.0)["loss"]
    logits = model.classify(x[:5])
    expected = F.cross_entropy(logits, targets[:5], label_smoothing=0.2) - 0.2 * math.log(5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = Classifier(encoder, 5, torch.nn.Identity())
    plain.head = model.head
    assert plain(Batch([x], targets, torch.arange(6)), 0.0)["loss"].item() == pytest.approx(
        F.cross_entropy(logits, targets[:5]).item(), rel=1e-6)
    with pytest.raises(SelfsupError, match="label smoothing"):
        Classifier(encoder, 5, torch.nn.Identity(), label_smoothing=1.0)


def test_a_classifier_run_records_how_it_was_made(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, epochs=1)
    fit_classifier(model, splits.train, splits.test, tmp_path, settings,
                   meta={"config": {"method": {"name": "simclr"}}, "classifier": {"classes": 10}}, quiet=True)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {"command", "git_revision", "versions", "device", "precision"} <= set(meta)
    assert meta["settings"]["optim"]["lr"] == 0.2 and meta["settings"]["epochs"] == 1
    assert meta["classifier"] == {"classes": 10} and meta["training_images"] == len(splits.train)
    assert yaml.safe_load((tmp_path / "settings.yaml").read_text()) == meta["settings"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {"method": {"name": "simclr"}}


def test_a_classifier_run_resumes_only_with_the_settings_it_was_started_with(mnist_root, tmp_path):
    model, splits, settings = _setup(mnist_root, epochs=1)
    fit_classifier(model, splits.train, splits.test, tmp_path, settings, quiet=True)
    other = ClassifierTraining(**{**settings.__dict__, "optim": OptimConfig(lr=0.03, weight_decay=0.0,
                                                                             warmup_epochs=0.0), "epochs": 3})
    with pytest.raises(SelfsupError, match=r"other settings \(epochs: then 1, now 3; optim.lr: then 0.2, now 0.03\)"):
        fit_classifier(model, splits.train, splits.test, tmp_path, other, resume=True, quiet=True)
    # Where it runs and how often it reports may change.
    same = ClassifierTraining(**{**settings.__dict__, "log_every": 5, "device": "auto"})
    fit_classifier(model, splits.train, splits.test, tmp_path, same, resume=True, quiet=True)
