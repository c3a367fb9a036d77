"""The engine alone: any module returning {"loss"} on (views, targets, index) batches, with
per-group learning rates, frozen parts, clipping, a weight-decay schedule and timing that leaves no trace."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data import BatchLoader, ImageDataset
from selfsup.engine import (Batch, Engine, Freeze, OptimConfig, Schedule, build_optimizer, default_param_groups,
                            resolve_precision)
from selfsup.engine.runtime import Precision


class TinyClassifier(nn.Module):
    """A module the engine has never heard of: it learns from the labels of its batches."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)
        self.seen_progress = []

    def views(self, images):
        return [images.float() / 255]

    def param_groups(self):
        return default_param_groups(self)

    def forward(self, batch: Batch, progress: float):
        self.seen_progress.append(progress)
        logits = self.head(self.backbone(batch.views[0]))
        return {"loss": F.cross_entropy(logits, batch.targets), "mean_index": batch.index.float().mean()}


def _data(count=48):
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(count) % 3
    images = torch.randint(0, 40, (count, 1, 8, 8), dtype=torch.uint8, generator=g)
    for i, label in enumerate(targets.tolist()):  # the class is a bright row band
        images[i, 0, 2 * label:2 * label + 2] = 220
    return ImageDataset(images, targets, ["a", "b", "c"])


def _engine(tmp_path, module=None, *, epochs=3, optim=None, freeze=(), clip_grad=None, final_wd=None):
    torch.manual_seed(0)
    module = module or TinyClassifier()
    loader = BatchLoader(_data(), 16, device=torch.device("cpu"), seed=0)
    optim = optim or OptimConfig(lr=0.5, weight_decay=1e-4, warmup_epochs=0.0)
    total = epochs * len(loader)
    schedule = Schedule(total, optim.lr, 0, 0.0, optim.weight_decay, final_wd)
    optimizer = build_optimizer(module.param_groups(), optim, schedule.peak_lr)
    engine = Engine(module, loader, optimizer, schedule, run_dir=tmp_path, device=torch.device("cpu"),
                    precision=resolve_precision("fp32", torch.device("cpu")), freeze=freeze, clip_grad=clip_grad,
                    log_every=1, quiet=True)
    engine.seed_streams()
    return module, engine


def _rows(run_dir, stream):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["stream"] == stream]


def test_any_module_learns_from_the_labels_of_its_batches(tmp_path):
    module, engine = _engine(tmp_path, epochs=6)
    summary = engine.fit()
    steps = _rows(tmp_path, "step")
    assert summary["steps"] == 18 and len(steps) == 18
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert "mean_index" in steps[0]  # other outputs of the module are logged
    assert module.seen_progress[0] == 0.0 and module.seen_progress[-1] == pytest.approx(17 / 18)
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "summary.json").is_file()


def test_frozen_parts_do_not_move_until_their_step(tmp_path):
    module, engine = _engine(tmp_path, epochs=2, freeze=(Freeze("backbone.", until_step=3),))
    trunk = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    head = module.head.weight.detach().clone()
    loader_iter = engine.loader.iterate()
    for _ in range(3):
        engine.train_step(*next(loader_iter))
    for key, value in module.backbone.state_dict().items():  # weights and BN statistics kept
        assert torch.equal(value, trunk[key]), key
    assert not torch.equal(module.head.weight, head)
    engine.train_step(*next(engine.loader.iterate()))  # step 3: the trunk trains from now on
    assert not torch.equal(module.backbone[1].weight, trunk["1.weight"])
    assert module.backbone[2].training  # its BatchNorm back in train mode
    assert not torch.equal(module.backbone[2].running_mean, trunk["2.running_mean"])


def test_groups_follow_the_schedule_at_their_own_scale(tmp_path):
    optim = OptimConfig(lr=0.4, weight_decay=1e-3, warmup_epochs=0.0, lr_scales={"backbone": 0.25})
    module, engine = _engine(tmp_path, optim=optim, final_wd=1e-2)
    row = engine.train_step(*next(engine.loader.iterate()))
    assert row["lr"] == pytest.approx(0.4) and row["weight_decay"] == pytest.approx(1e-3)
    groups = {(g["name"], g["wd_scale"]): g for g in engine.optimizer.param_groups}
    assert groups[("backbone", 1.0)]["lr"] == pytest.approx(0.1) and groups[("heads", 1.0)]["lr"] == pytest.approx(0.4)
    assert groups[("heads", 0.0)]["weight_decay"] == 0.0  # biases and norms never decay
    for _ in range(engine.schedule.total_steps - 1):
        row = engine.train_step(*next(engine.loader.iterate()))
    # Last step (8 of 9): the cosines have nearly reached their ends (lr 0, weight decay 1e-2).
    assert row["lr"] == pytest.approx(0.2 * (1 + math.cos(math.pi * 8 / 9)))
    assert row["weight_decay"] == pytest.approx(1e-2 + 0.5 * (1e-3 - 1e-2) * (1 + math.cos(math.pi * 8 / 9)))
    assert groups[("backbone", 1.0)]["weight_decay"] == pytest.approx(row["weight_decay"])


def test_gradient_clipping_bounds_the_update(tmp_path):
    optim = OptimConfig(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, warmup_epochs=0.0)
    module, engine = _engine(tmp_path, optim=optim, clip_grad=1e-3)
    before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    row = engine.train_step(*next(engine.loader.iterate()))
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert row["grad_norm"] > 1e-3  # the norm before clipping is logged
    assert (after - before).norm() == pytest.approx(1e-3, rel=1e-3)  # plain SGD step of the clipped gradient


def test_timing_steps_leaves_weights_optimiser_and_randomness_untouched(tmp_path):
    module, engine = _engine(tmp_path)
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = engine.time_steps(count=2)
    assert seconds > 0 and engine.step == 0 and not engine.optimizer.state
    assert all(torch.equal(v, weights[k]) for k, v in module.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_non_finite_loss_stops_before_the_update(tmp_path):
    class Diverging(TinyClassifier):
        def forward(self, batch, progress):
            out = super().forward(batch, progress)
            return {"loss": out["loss"] * float("inf")}

    module, engine = _engine(tmp_path, Diverging())
    weights = {k: v.clone() for k, v in module.named_parameters()}
    from selfsup.engine import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match="the loss became inf at step 0"):
        engine.train_step(*next(engine.loader.iterate()))
    assert all(torch.equal(p, weights[k]) for k, p in module.named_parameters())


def test_precision_name_is_what_autocast_runs():
    assert Precision("fp32", None).autocast(torch.device("cpu")).__class__.__name__ == "nullcontext"


def test_best_is_chosen_by_one_criterion_and_skipped_epochs_are_not_candidates(tmp_path):
    """A monitor every 2 epochs whose value falls: best.pt is the first monitored epoch's state,
    never rewritten by the epochs in between (where only the loss is known)."""
    torch.manual_seed(0)
    module = TinyClassifier()
    loader = BatchLoader(_data(), 16, device=torch.device("cpu"), seed=0)
    optim = OptimConfig(lr=0.5, weight_decay=1e-4, warmup_epochs=0.0)
    schedule = Schedule(6 * len(loader), optim.lr, 0, 0.0, optim.weight_decay, None)
    values = iter([90.0, 80.0, 70.0])
    engine = Engine(module, loader, build_optimizer(module.param_groups(), optim, schedule.peak_lr), schedule,
                    run_dir=tmp_path, device=torch.device("cpu"), precision=resolve_precision("fp32", torch.device("cpu")),
                    monitor=lambda: {"knn_top1": next(values)}, monitor_every=2, best_by="knn_top1", quiet=True)
    engine.seed_streams()
    summary = engine.fit()
    from selfsup.engine import checkpoint

    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 2 * len(loader) and best["best"] == 90.0 and best["best_name"] == "knn_top1"
    assert summary["best"] == 90.0 and summary["best_metric"] == "knn_top1" and engine.criterion == {
        "metric": "knn_top1", "higher_is_better": True}
    epochs = _rows(tmp_path, "epoch")
    assert [("knn_top1" in r) for r in epochs] == [False, True, False, True, False, True]


def test_best_by_the_loss_without_a_monitor(tmp_path):
    module, engine = _engine(tmp_path, epochs=3)
    summary = engine.fit()
    from selfsup.engine import checkpoint

    losses = [r["loss"] for r in _rows(tmp_path, "epoch")]
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["best"] == min(losses) == summary["best"] and summary["best_metric"] == "loss"
    with pytest.raises(ValueError, match="without a monitor"):
        Engine(module, engine.loader, engine.optimizer, engine.schedule, run_dir=tmp_path, device=torch.device("cpu"),
               precision=resolve_precision("fp32", torch.device("cpu")), best_by="knn_top1")
