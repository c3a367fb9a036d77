"""Fitting a classifier on labels with the engine: the recipe that fine-tuning, distillation,
continual, multi-task and semi-supervised learning build on.

:func:`fit_classifier` fits any learner of :mod:`selfsup.learners` (a module with ``views``,
``param_groups``, ``classify`` and a forward returning ``{"loss"}``) on the labelled images of a
dataset, with its test accuracy each epoch; :class:`ClassifierTraining` says how;
:class:`StartingPoint` is the encoder a downstream strategy starts from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import BatchLoader, ImageDataset
from ..defaults import TRAINING_DEFAULTS
from ..engine import Engine, Freeze, OptimConfig, Schedule, build_optimizer, checkpoint, dist
from ..engine.lock import unlock_run_dir
from ..errors import SelfsupError
from ..learners.classifier import classify_all
from ..models import StagedBackbone, trunk_of
from ..files import write_json
from ..views import EvalView
from .run import check_settings, open_run


def classifier_optim(lr: float = TRAINING_DEFAULTS["finetune"].lr,
                     weight_decay: float = TRAINING_DEFAULTS["finetune"].weight_decay) -> OptimConfig:
    """The optimiser every downstream strategy trains with (:mod:`selfsup.defaults`)."""
    return OptimConfig(name="sgd", lr=lr, weight_decay=weight_decay, warmup_epochs=0.0)


@dataclass
class ClassifierTraining:
    """How a classifier is trained (defaults: the fine-tuning protocol of SimCLR / SPEC section 7;
    another strategy's from :meth:`for_strategy`)."""

    epochs: int = TRAINING_DEFAULTS["finetune"].epochs
    steps: int | None = None
    """A fixed number of optimisation steps instead of ``epochs`` (Selfie's protocol: the same
    schedule whatever the label fraction); None: ``epochs`` passes over the labelled images."""
    batch_size: int = TRAINING_DEFAULTS["finetune"].batch_size
    optim: OptimConfig = field(default_factory=classifier_optim)
    backbone_lr_scale: float = TRAINING_DEFAULTS["finetune"].backbone_lr_scale
    """Trunk learning rate as a fraction of the head's (0 freezes the trunk: a linear probe)."""
    label_smoothing: float = 0.0
    """eps of :class:`~selfsup.learners.Classifier`: the uniform-teacher special case of distillation."""
    head_warmup_epochs: float = 0.0
    """Epochs at the start in which only the head trains (trunk frozen, its BatchNorm statistics kept)."""
    layer_modes: dict[str, str] = field(default_factory=dict)
    """Transfer mode per stage of the trunk (SPEC 7): ``frozen`` (never trains, BatchNorm statistics
    kept), ``finetune`` (at ``backbone_lr_scale``; the default for stages not named) or ``retrain``
    (weights re-initialised, trained at the head's rate), e.g. ``{conv1: frozen, res5: retrain}``."""
    test_every: int = 1
    """Measure test top-1 every this many epochs (and after the last)."""
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10

    @classmethod
    def for_strategy(cls, strategy: str, *, lr: float | None = None, weight_decay: float | None = None,
                     start_lr_scale: float = 1.0, **changes: Any) -> ClassifierTraining:
        """``strategy``'s defaults (:data:`selfsup.defaults.TRAINING_DEFAULTS`) with ``changes``;
        ``start_lr_scale`` is the trunk's rate where the strategy takes it from its starting point
        (:attr:`~selfsup.recipes.loading.StartingPoint.backbone_lr_scale`)."""
        if "optim" in changes:
            raise SelfsupError("for_strategy builds the strategy's optimiser: give lr= and weight_decay=, or "
                               "construct ClassifierTraining(optim=...) directly")
        if strategy not in TRAINING_DEFAULTS:
            raise SelfsupError(f"no training defaults for '{strategy}'; known: {', '.join(TRAINING_DEFAULTS)}")
        defaults = TRAINING_DEFAULTS[strategy]
        optim = classifier_optim(defaults.lr if lr is None else lr,
                                 defaults.weight_decay if weight_decay is None else weight_decay)
        scale = start_lr_scale if defaults.backbone_lr_scale is None else defaults.backbone_lr_scale
        return cls(**{"epochs": defaults.epochs, "batch_size": defaults.batch_size, "backbone_lr_scale": scale,
                      **changes, "optim": optim})


class AccuracyMonitor:
    """Top-1 (%) of ``model.classify`` on a labelled set, in the deterministic evaluation view."""

    def __init__(self, model: nn.Module, dataset: ImageDataset, view: EvalView, batch_size: int = 512) -> None:
        self.model, self.dataset, self.view, self.batch_size = model, dataset, view, batch_size
        self.last: float | None = None
        self.results: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        accuracy = None
        if dist.is_main():
            if hasattr(self.model, "test_accuracies"):  # several tasks: a multi-task learner
                accuracy = self.model.test_accuracies(self.dataset, self.view)
            else:
                logits = classify_all(self.model, self.dataset.images, self.view, self.batch_size)
                accuracy = {"test_top1": 100.0 * (logits.argmax(1) == self.dataset.targets).float().mean().item()}
        self.results = dist.broadcast_object(accuracy)
        self.last = self.results["test_top1"]
        return dict(self.results)


def fit_classifier(model: nn.Module, train: ImageDataset, test: ImageDataset | None, run_dir: str | Path,
                   settings: ClassifierTraining, *, meta: dict[str, Any] | None = None, resume: bool = False,
                   unlabelled: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Fit ``model`` on the labelled images of ``train`` with the engine; test top-1 each epoch.

    ``unlabelled``: train on every image, its target -1 where it has no label (a distillation
    student, a semi-supervised learner). Checkpoints, metrics and the summary go to ``run_dir``
    like a pretraining run's, which is locked against other writers while it runs.
    """
    try:
        return _fit_classifier(model, train, test, run_dir, settings, meta=meta, resume=resume,
                               unlabelled=unlabelled, quiet=quiet)
    finally:
        unlock_run_dir(run_dir)


def _fit_classifier(model: nn.Module, train: ImageDataset, test: ImageDataset | None, run_dir: str | Path,
                    settings: ClassifierTraining, *, meta: dict[str, Any] | None, resume: bool,
                    unlabelled: bool, quiet: bool) -> dict[str, Any]:
    run = open_run(run_dir, device=settings.device, precision=settings.precision, resume=resume)
    run_dir, device = run.dir, run.device
    training = train if unlabelled else train.select((train.targets >= 0).nonzero().squeeze(1))
    if len(training) < settings.batch_size:
        raise SelfsupError(f"{len(training)} {'' if unlabelled else 'labelled '}training images are fewer than a "
                           f"batch of {settings.batch_size}; lower the batch size")
    model.to(device)
    loader = BatchLoader(training, settings.batch_size // dist.world_size(), device=device, seed=settings.seed,
                         rank=dist.rank(), world_size=dist.world_size())
    steps_per_epoch = len(loader)
    if settings.steps is not None and settings.steps < 1:
        raise SelfsupError(f"steps must be positive, got {settings.steps}")
    schedule = Schedule.from_config(settings.optim, settings.steps or settings.epochs * steps_per_epoch,
                                    steps_per_epoch, settings.batch_size)
    scales = dict(settings.optim.lr_scales)
    frozen_trunk = settings.backbone_lr_scale == 0
    groups = model.param_groups()
    frozen_prefixes: list[str] = []
    if settings.layer_modes:
        if frozen_trunk:
            raise SelfsupError("backbone_lr_scale 0 freezes the whole trunk; with per-stage layer_modes give "
                               "the fine-tuned stages a rate (e.g. 0.1) and mark the others frozen")
        groups, frozen_prefixes = stage_groups(model, groups, settings.layer_modes, settings.backbone_lr_scale)
    elif not frozen_trunk:
        scales.setdefault("backbone", settings.backbone_lr_scale)
    groups = [g for g in groups if not (frozen_trunk and g["name"] == "backbone")]
    optimizer = build_optimizer(groups, dataclasses.replace(settings.optim, lr_scales=scales), schedule.peak_lr)
    warmup = round(settings.head_warmup_epochs * steps_per_epoch)
    freeze = tuple(Freeze(prefix, schedule.total_steps) for prefix in frozen_prefixes)
    if frozen_trunk or warmup:
        freeze += (Freeze("encoder.", schedule.total_steps if frozen_trunk else warmup),)
    mean, std = training.stats()
    monitor = AccuracyMonitor(model, test, EvalView(train.image_size, mean, std)) if test is not None else None
    # The test accuracy is logged every epoch but never chooses best.pt (that would select on test data).
    recorded = dataclasses.asdict(settings)
    engine = Engine(model, loader, optimizer, schedule, run_dir=run_dir, device=device, precision=run.precision,
                    clip_grad=settings.optim.clip_grad,
                    clip_per_parameter=settings.optim.clip_mode == "per_parameter", freeze=freeze, monitor=monitor,
                    monitor_every=max(settings.test_every, 1), meta={**(meta or {}), "training": recorded},
                    seed=settings.seed, log_every=settings.log_every, quiet=quiet)
    if run.resume_from is not None:
        state = checkpoint.load(run.resume_from)
        check_settings(state, "training", recorded, schema=dataclasses.asdict(type(settings)()))
        engine.restore(state)
    else:
        engine.seed_streams()
    facts = {key: value for key, value in (meta or {}).items() if key != "config"}
    run.record({**facts, "resumed_at_step": engine.step, "total_steps": schedule.total_steps,
                "steps_per_epoch": steps_per_epoch, "training_images": len(training)},
               config=(meta or {}).get("config"), settings=recorded)
    summary = engine.fit(resumed=run.resume_from is not None)
    if monitor is not None and monitor.last is not None:
        summary.update({name: round(value, 2) for name, value in monitor.results.items()})
        if dist.is_main():
            write_json(run_dir / "summary.json", summary)
    return summary


LAYER_MODES = ("frozen", "finetune", "retrain")


def stage_groups(model: nn.Module, groups: list[dict], modes: dict[str, str], trunk_scale: float
                 ) -> tuple[list[dict], list[str]]:
    """The ``backbone`` group of ``model`` split by stage of its trunk, each at the rate of its mode
    (``retrain`` stages re-initialised here); returns the groups and the prefixes of frozen stages."""
    encoder = model.encoder
    trunk = trunk_of(encoder)
    trunk_name = "" if trunk is encoder else "backbone."
    if not isinstance(trunk, StagedBackbone):
        raise SelfsupError(f"per-stage transfer modes need a ResNet-style trunk; {type(trunk).__name__} has no stages")
    stages = trunk.stage_prefixes()
    for stage, mode in modes.items():
        if stage not in stages:
            raise SelfsupError(f"layer_modes: no stage '{stage}'; this trunk has {', '.join(stages)}")
        if mode not in LAYER_MODES:
            raise SelfsupError(f"layer_modes.{stage}: unknown mode '{mode}'; use {', '.join(LAYER_MODES)}")
    named = dict(encoder.named_parameters())
    taken: set[str] = set()
    out, frozen = [g for g in groups if g["name"] != "backbone"], []
    for stage, prefixes in stages.items():
        mode = modes.get(stage, "finetune")
        full = [trunk_name + prefix for prefix in prefixes]
        names = [n for n in named if n.startswith(tuple(full))]
        taken.update(names)
        if mode == "frozen":
            frozen += ["encoder." + prefix for prefix in full]
            continue
        if mode == "retrain":
            for module_name, module in encoder.named_modules():
                if (module_name + ".").startswith(tuple(full)) and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        out.append({"name": f"backbone.{stage}", "params": [named[n] for n in names],
                    "lr_scale": 1.0 if mode == "retrain" else trunk_scale})
    rest = [p for n, p in named.items() if n not in taken]  # e.g. the head layers of a HeadTrunk
    if rest:
        out.append({"name": "backbone.rest", "params": rest, "lr_scale": trunk_scale})
    return out, frozen


