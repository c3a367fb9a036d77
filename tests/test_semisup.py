"""Semi-supervised methods: each unlabelled loss against its formula on hand-made logits, FixMatch's
confidence mask, Mean Teacher's gradient-free teacher, the batched RandAugment, every method
lowering its loss on a fixed batch, and the command end to end (sweep, resume, bad input)."""
import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.cli import main
from selfsup.engine import Batch, checkpoint
from conftest import killed_then_finished, tiny_cli_sets
from selfsup.errors import SelfsupError
from selfsup.recipes.semisup import SemiSupervisedSettings, build_learner, semisup_training_set
from selfsup.learners.semisup import (METHODS, Common, FixMatch, MeanTeacher, MixMatch, PiModel, PseudoLabel,
                                     TemporalEnsembling, sharpen, sigmoid_rampup)
from selfsup.learners.semisup.base import linear_rampup
from selfsup.learners.semisup.uda import UDA
from selfsup.views import ImageInfo
from selfsup.views.randaugment import OPERATIONS, cutout, equalize, posterize, rand_augment, solarize

IMAGE = ImageInfo(8, 1, (0.5,), (0.25,))


def _encoder():
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    encoder.num_features = 4
    return encoder


def _batch(views, targets):
    return Batch(views, torch.tensor(targets), torch.arange(len(targets)))


def test_fixmatch_masks_predictions_below_the_threshold():
    learner = FixMatch(_encoder(), 3, IMAGE, threshold=0.95)
    weak = torch.tensor([[8.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 6.0]])  # confidence .9993, .5, .995
    strong = torch.randn(3, 3, requires_grad=True)
    unlabelled = torch.ones(3, dtype=torch.bool)
    loss, logged = learner.unlabelled_loss(None, weak, [strong], unlabelled, 0.0)
    expected = (F.cross_entropy(strong[0:1], torch.tensor([0])) + F.cross_entropy(strong[2:3], torch.tensor([2]))) / 3
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert logged["mask_rate"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0  # the unsure image teaches nothing
    pseudo = PseudoLabel(_encoder(), 3, IMAGE, threshold=0.95)
    logits = weak.clone().requires_grad_(True)
    loss, logged = pseudo.unlabelled_loss(None, logits, [], unlabelled, 0.0)
    expected = (F.cross_entropy(weak[0:1], torch.tensor([0])) + F.cross_entropy(weak[2:3], torch.tensor([2]))) / 3
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6) and logged["mask_rate"] == pytest.approx(2 / 3)


def test_uda_is_masked_kl_to_the_sharpened_weak_prediction():
    learner = UDA(_encoder(), 2, IMAGE, temperature=0.5, threshold=0.8)
    weak = torch.tensor([[2.0, 0.0], [0.1, 0.0]])  # confidence .88 (kept) and .52 (masked)
    strong = torch.tensor([[0.5, 0.5], [3.0, -3.0]])
    loss, logged = learner.unlabelled_loss(None, weak, [strong], torch.ones(2, dtype=torch.bool), 0.0)
    target = (weak[0] / 0.5).softmax(0)
    expected = (target * (target.log() - strong[0].log_softmax(0))).sum() / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6) and logged["mask_rate"] == 0.5


def test_mean_teachers_teacher_gets_no_gradient_and_follows_by_ema():
    torch.manual_seed(0)
    learner = MeanTeacher(_encoder(), 3, IMAGE, ema=0.9)
    assert all(not p.requires_grad for p in learner.teacher.parameters())
    trained = {id(p) for group in learner.param_groups() for p in group["params"]}
    assert not trained & {id(p) for p in learner.teacher.parameters()}
    images = torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8)
    out = learner(_batch(learner.views(images), [0, 1, -1, -1, -1, -1]), 0.5)
    out["loss"].backward()
    assert all(p.grad is None for p in learner.teacher.parameters())
    assert learner.head.weight.grad is not None and out["loss_unlabelled"] >= 0
    with torch.no_grad():
        learner.head.weight.add_(1.0)
    before = learner.teacher["head"].weight.clone()
    learner.steps_done.fill_(1000)  # past the warm start: the decay is ema itself
    learner.after_step(0.5)
    assert torch.allclose(learner.teacher["head"].weight, 0.9 * before + 0.1 * learner.head.weight)


def test_mean_teachers_decay_starts_as_the_true_average_of_the_weights():
    """The reference's min(1 - 1/(t + 1), alpha): after the first step the teacher is the mean of its
    start and the student; the decay then rises to alpha (0.99 by default) and stays."""
    torch.manual_seed(0)
    learner = MeanTeacher(_encoder(), 3, IMAGE)
    start = learner.teacher["head"].weight.clone()
    with torch.no_grad():
        learner.head.weight.add_(1.0)
    learner.after_step(0.0)
    assert torch.allclose(learner.teacher["head"].weight, 0.5 * start + 0.5 * learner.head.weight)
    decays = []
    for _ in range(200):
        decays.append(learner.teacher_decay())
        learner.steps_done += 1
    assert decays[:3] == pytest.approx([0.5, 2 / 3, 0.75]) and decays[-1] == 0.99 and decays == sorted(decays)
    # After 150 steps the initial network's share of the teacher: the reference's 0.6%, not 0.99^150 = 22%.
    share = 1.0
    for t in range(1, 151):
        share *= min(1 - 1 / (t + 1), 0.99)
    assert share < 0.01


def test_pi_model_and_temporal_ensembling_weights_scale_with_the_labelled_share():
    for cls in (PiModel, TemporalEnsembling):
        learner = cls(_encoder(), 3, IMAGE, Common(rampup_steps=0))
        learner.prepare(100, 0.01)
        assert learner.unlabelled_weight() == pytest.approx(learner.default_weight * 0.01)  # tempens' M / N
        unscaled = cls(_encoder(), 3, IMAGE, Common(rampup_steps=0, scale_by_label_fraction=False))
        unscaled.prepare(100, 0.01)
        assert unscaled.unlabelled_weight() == learner.default_weight
    fixmatch = FixMatch(_encoder(), 3, IMAGE)
    fixmatch.prepare(100, 0.01)
    assert fixmatch.unlabelled_weight() == 1.0  # not a method whose reference scales it


def test_ramps_are_counted_in_steps_with_the_papers_lengths():
    assert (MixMatch.default_rampup_steps, MixMatch.ramp) == (16_384, "linear")
    assert PiModel.default_rampup_steps == TemporalEnsembling.default_rampup_steps == MeanTeacher.default_rampup_steps \
        == 40_000
    assert FixMatch.default_rampup_steps == 0
    assert linear_rampup(4096, 16_384) == 0.25 and linear_rampup(20_000, 16_384) == 1.0
    learner = MixMatch(_encoder(), 3, IMAGE)
    learner.steps_done.fill_(8192)
    assert learner.unlabelled_weight() == pytest.approx(7.5 * 0.5)
    learner.after_step(0.0)
    assert int(learner.steps_done) == 8193  # counted by the learner, so a resumed run keeps its place


def test_short_runs_say_what_they_cannot_show():
    mixmatch = MixMatch(_encoder(), 3, IMAGE)
    warnings = mixmatch.schedule_warnings(150, 600)
    assert any("ramps up over 16384 steps" in w and "ends at 0.9% of the weight" in w for w in warnings)
    assert any("decay 0.999" in w and "86% of the initial network" in w for w in warnings)
    tempens = TemporalEnsembling(_encoder(), 3, IMAGE, Common(rampup_steps=0))
    assert any("trains for 0.25 epochs" in w for w in tempens.schedule_warnings(150, 600))
    assert tempens.schedule_warnings(1200, 600) == []
    assert FixMatch(_encoder(), 3, IMAGE, Common(eval_ema=0.0)).schedule_warnings(150, 600) == []


def test_mixmatch_draws_lambda_per_image_and_keeps_each_mixed_image_closest_to_its_own():
    torch.manual_seed(0)
    learner = MixMatch(_encoder(), 3, IMAGE)
    inputs = torch.randn(64, 1, 8, 8)
    targets = F.one_hot(torch.arange(64) % 3, 3).float()
    mixed, mixed_targets, lam = learner.mix(inputs, targets)
    assert lam.shape == (64,) and (lam >= 0.5).all() and lam.std() > 0.05  # one draw per image
    partner = (mixed - lam.view(-1, 1, 1, 1) * inputs) / (1 - lam.view(-1, 1, 1, 1))
    assert all(any(torch.allclose(partner[i], inputs[j], atol=1e-4) for j in range(64)) for i in range(4))
    assert torch.allclose(mixed_targets.sum(1), torch.ones(64))


def test_fixmatch_evaluates_the_moving_average_of_its_weights():
    torch.manual_seed(0)
    learner = FixMatch(_encoder(), 3, IMAGE)
    assert learner.eval_ema == 0.999 and all(not p.requires_grad for p in learner.ema_model.parameters())
    trained = {id(p) for group in learner.param_groups() for p in group["params"]}
    assert not trained & {id(p) for p in learner.ema_model.parameters()}
    start = learner.ema_model["head"].weight.clone()
    with torch.no_grad():
        learner.head.weight.add_(1.0)
    learner.after_step(0.0)
    assert torch.allclose(learner.ema_model["head"].weight, 0.999 * start + 0.001 * learner.head.weight, atol=1e-6)
    x = torch.randn(2, 1, 8, 8)
    learner.eval()
    with torch.no_grad():
        assert torch.allclose(learner.predict(x), learner.ema_model["head"](learner.ema_model["encoder"](x)))
        assert not torch.allclose(learner.predict(x), learner.classify(x))
    assert not hasattr(FixMatch(_encoder(), 3, IMAGE, Common(eval_ema=0.0)), "ema_model")


def test_temporal_ensembling_targets_are_bias_corrected_averages_of_past_predictions():
    learner = TemporalEnsembling(_encoder(), 2, IMAGE, alpha=0.6)
    learner.prepare(4)
    unlabelled = torch.ones(2, dtype=torch.bool)
    batch = Batch([torch.zeros(2, 1, 8, 8)], torch.tensor([-1, -1]), torch.tensor([1, 3]))
    first = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    loss, logged = learner.unlabelled_loss(batch, first, [], unlabelled, 0.0)
    assert loss.item() == 0.0 and logged["with_target"] == 0  # no past prediction yet
    second = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    loss, _ = learner.unlabelled_loss(batch, second, [], unlabelled, 0.0)
    target = first.softmax(1)  # (1 - a) p / (1 - a^1) = p
    assert loss.item() == pytest.approx((second.softmax(1) - target).pow(2).sum(1).mean().item(), abs=1e-6)
    third_target = (0.6 * 0.4 * first.softmax(1) + 0.4 * second.softmax(1)) / (1 - 0.6 ** 2)
    assert torch.allclose(learner.ensemble[[1, 3]] / (1 - 0.6 ** 2), third_target, atol=1e-6)
    assert learner.updates.tolist() == [0, 2, 0, 2]


def test_sharpening_and_ramp_up_by_hand():
    p = torch.tensor([[0.6, 0.4]])
    assert sharpen(p, 0.5).tolist()[0] == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert sigmoid_rampup(0.0, 0.3) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert sigmoid_rampup(0.15, 0.3) == pytest.approx(torch.exp(torch.tensor(-1.25)).item())
    assert sigmoid_rampup(0.5, 0.3) == 1.0 and sigmoid_rampup(0.0, 0.0) == 1.0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_lowers_its_loss_on_a_fixed_batch(method):
    torch.manual_seed(0)
    learner = build_learner(SemiSupervisedSettings(method=method, rampup_steps=0), _encoder(), 3, IMAGE)
    learner.prepare(12)
    images = torch.randint(0, 255, (12, 1, 8, 8), dtype=torch.uint8)
    images[:4, :, :4] = 255  # class 0 bright on top, class 1 at the bottom, class 2 dark
    images[4:8, :, 4:] = 255
    images[8:] //= 4
    targets = [0, 0, -1, -1, 1, 1, -1, -1, 2, 2, -1, -1]
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)
    if method == "mixmatch":  # its targets are its own sharpened guesses: hold the first ones fixed
        first_guess = learner.guess_labels
        learner.guess_labels = lambda views, cache={}: cache.setdefault("guess", first_guess(views))
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # the same views and draws every step: a fixed batch
        out = learner(_batch(learner.views(images), targets), 1.0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        if hasattr(learner, "after_step"):
            learner.after_step(1.0)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses


def test_randaugment_operations_by_hand():
    x = torch.tensor([0.1, 0.4, 0.6, 0.9]).view(1, 1, 2, 2)
    assert solarize(x, torch.tensor([0.5])).flatten().tolist() == pytest.approx([0.1, 0.4, 0.4, 0.1])
    four_bits = posterize(x, torch.tensor([0.0])).flatten() * 255
    assert four_bits.tolist() == [16.0, 96.0, 144.0, 224.0]  # the low 4 bits dropped: 26 -> 16, 102 -> 96, ...
    two_levels = torch.tensor([0.2, 0.2, 0.2, 0.3]).view(1, 1, 2, 2)
    assert equalize(two_levels, torch.zeros(1)).flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])
    assert torch.equal(equalize(torch.full((1, 1, 2, 2), 0.5), torch.zeros(1)), torch.full((1, 1, 2, 2), 0.5))
    torch.manual_seed(0)
    holed = cutout(torch.zeros(3, 1, 16, 16), torch.tensor([0.5, 0.25, 0.0]))
    for hole, side in zip(holed[:2, 0] == 0.5, (8, 4)):  # a gray square of the side asked, cut at the border
        rows, columns = hole.any(1).sum().item(), hole.any(0).sum().item()
        assert hole.sum() == rows * columns and 0 < rows <= side and 0 < columns <= side
    assert holed[2].sum() == 0
    batch = torch.rand(64, 1, 12, 12)
    for name, op in OPERATIONS.items():
        out = op(batch, torch.rand(64))
        assert out.shape == batch.shape and 0 <= out.min() and out.max() <= 1, name
    assert torch.equal(OPERATIONS["identity"](batch, torch.rand(64)), batch)
    torch.manual_seed(3)
    first = rand_augment(batch)
    torch.manual_seed(3)
    assert torch.equal(first, rand_augment(batch))  # seeded
    changed = (first - batch).abs().flatten(1).amax(1) > 0
    assert changed.float().mean() > 0.8  # per image, and almost every image is changed (cutout, ops)


def test_training_set_holds_every_image_unlabelled_and_the_labels_at_the_ratio(mnist_root):
    from selfsup.data import DataConfig, load_splits

    train = load_splits(DataConfig(root=str(mnist_root)), labeled=True, quiet=True).train
    labelled = torch.tensor([0, 1, 2, 3])
    mixed = semisup_training_set(train, labelled, ratio=2.0)
    assert (mixed.targets == -1).sum() == 80 and (mixed.targets >= 0).sum() == 4 * 10  # 80 / (2 * 4) = 10 repeats
    assert torch.equal(mixed.targets[:4], train.targets[:4])
    assert len(semisup_training_set(train, labelled, 0.0)) == 4
    with pytest.raises(SelfsupError, match="ratio"):
        semisup_training_set(train, labelled, -1.0)


SEMISUP = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]


def test_semisup_command_sweeps_seeds_and_resumes_after_a_kill(mnist_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fixmatch"
    command = ["semisup", "--method", "fixmatch", "--labels", "0.25", "--seeds", "0", "1", "--run-dir", str(out),
               "--option", "threshold=0.5"] + SEMISUP + tiny_cli_sets(mnist_root)
    trained = killed_then_finished(command, monkeypatch, "seed1", 2)
    assert trained and all(s.endswith("25pct-seed1") for s in trained)  # seed 0 is read back, seed 1 resumed
    report = json.loads((out / "finetune.json").read_text())
    assert set(report["runs"]["25%"]) == {"0", "1"} and report["method"] == "fixmatch"
    meta = checkpoint.load(out / "25pct-seed1")
    assert meta["classifier"]["semisup"]["options"] == {"threshold": 0.5}
    assert meta["classifier"]["semisup"]["ratio"] == 7.0
    # FixMatch is read back as the moving average of its weights, as its paper evaluates it.
    assert meta["encoder"]["prefix"] == "ema_model.encoder" and meta["classifier"]["head_prefix"] == "ema_model.head"
    assert any("decay 0.999" in w for w in meta["classifier"]["semisup"]["warnings"])
    summary = json.loads((out / "25pct-seed1" / "summary.json").read_text())
    assert {"test_top1", "test_top1_raw"} <= set(summary)
    from selfsup.recipes.loading import load_classifier

    model, _ = load_classifier(out / "25pct-seed1")
    assert torch.equal(model.head.weight, meta["model"]["ema_model.head.weight"])
    assert "over 2 seed(s)" in capsys.readouterr().out


def test_semisup_from_a_checkpoint_and_bad_input(pretrained_run, mnist_root, tmp_path, capsys):
    run = tmp_path / "mt"
    assert main(["semisup", str(pretrained_run), "--method", "mean-teacher", "--labels", "0.25", "--run-dir",
                 str(run)] + SEMISUP) == 0
    assert "mean-teacher with 25% of the labels: test top-1" in capsys.readouterr().out
    meta = checkpoint.load(run)
    assert meta["classifier"]["source"].endswith("last.pt") and meta["encoder"]["method"].startswith("semi-supervised")
    assert main(["eval", "knn", str(run), "--quiet"]) == 0  # reads back like a fine-tuned checkpoint
    base = ["semisup", "--run-dir", str(tmp_path / "x")] + SEMISUP + tiny_cli_sets(mnist_root)
    assert main(base + ["--method", "vat"]) == 2
    assert "unknown semi-supervised method 'vat'" in capsys.readouterr().err
    assert main(base + ["--method", "fixmatch", "--option", "tau=0.9"]) == 2
    assert "fixmatch has no setting tau; it takes threshold" in capsys.readouterr().err
    assert main(base + ["--option", "threshold"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_a_methods_options_are_checked_against_its_own_signature():
    """Each learner states its settings in its constructor; a misspelt or mistyped one is refused by name."""
    def build(method, **options):
        return build_learner(SemiSupervisedSettings(method=method, options=options), _encoder(), 3, IMAGE)

    assert build("uda", threshold=0.7, temperature=0.3).threshold == 0.7
    with pytest.raises(SelfsupError, match=r"fixmatch has no setting treshold \(did you mean 'threshold'\?\)"):
        build("fixmatch", treshold=0.9)
    with pytest.raises(SelfsupError, match="mean-teacher --option.ema"):
        build("mean-teacher", ema="slow")
    with pytest.raises(SelfsupError, match="pi-model has no setting threshold; it takes none"):
        build("pi-model", threshold=0.9)
