"""Semi-supervised training from a few labels (SPEC 8): any learner of :mod:`selfsup.learners.semisup`,
from random initialisation or any selfsup checkpoint, on a class-balanced label fraction.

The training set is every training image without its label (target -1) plus the labelled
ones, repeated so that batches hold about one labelled image per ``ratio`` (mu) unlabelled ones
(FixMatch draws separate batches of B and mu B; in expectation this is the same). An epoch is
one pass over the unlabelled images. The run is the classifier recipe's
(:func:`~selfsup.recipes.classifier.fit_classifier`): checkpoints, resume, test top-1 per epoch.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import ImageDataset, label_index
from ..engine import dist
from ..arguments import check_kwargs, signature_defaults
from ..errors import SelfsupError, closest
from ..learners.semisup import METHODS, Common, SemiSupervised
from ..views import ImageInfo
from .classifier import ClassifierTraining, fit_classifier
from .sweep import label_sweep
from .loading import StartingPoint, classifier_meta


@dataclass
class SemiSupervisedSettings:
    method: str = "fixmatch"
    weight: float | None = None
    """Weight of the unlabelled loss (None: the method's default)."""
    rampup_steps: int | None = None
    """Optimiser steps over which that weight ramps up (None: the method's paper's length)."""
    ratio: float | None = None
    """mu: unlabelled images per labelled one in a batch (None: the method's default)."""
    eval_ema: float | None = None
    """Decay of the moving average of the weights that is evaluated (None: the method's default,
    0.999 for FixMatch and MixMatch as their papers; 0: the trained network)."""
    scale_by_label_fraction: bool = True
    """Pi-model and temporal ensembling: the weight times the labelled share M / N, as their code."""
    options: dict[str, Any] = field(default_factory=dict)
    """The method's own settings, e.g. ``{"threshold": 0.9}`` for FixMatch."""


def build_learner(settings: SemiSupervisedSettings, encoder: torch.nn.Module, classes: int,
                  image: ImageInfo) -> SemiSupervised:
    if settings.method not in METHODS:
        raise SelfsupError(f"unknown semi-supervised method '{settings.method}'; use one of {', '.join(METHODS)}")
    cls = METHODS[settings.method]
    shared = ("encoder", "num_classes", "image", "common")
    own = signature_defaults(cls, skip=shared)  # the method's own settings: its keyword-only arguments
    unknown = sorted(set(settings.options) - set(own))
    if unknown:
        raise SelfsupError(f"{settings.method} has no setting {', '.join(unknown)}{closest(unknown[0], list(own))}; "
                           f"it takes {', '.join(sorted(own)) or 'none'}")
    options = check_kwargs(f"{settings.method} --option", settings.options, cls, skip=shared)  # and their types
    common = Common(weight=settings.weight, rampup_steps=settings.rampup_steps, eval_ema=settings.eval_ema,
                    scale_by_label_fraction=settings.scale_by_label_fraction)
    return cls(encoder, classes, image, common, **options)


def semisup_training_set(train: ImageDataset, labelled: torch.Tensor, ratio: float) -> ImageDataset:
    """Every image of ``train`` unlabelled, plus the ``labelled`` ones with their labels repeated to
    about one per ``ratio`` unlabelled images (ratio 0: the labelled images alone)."""
    if ratio < 0:
        raise SelfsupError(f"the unlabelled-to-labelled ratio must be >= 0, got {ratio}")
    if ratio == 0:
        return train.select(labelled)
    repeats = max(1, round(len(train) / (ratio * len(labelled))))
    index = torch.cat([labelled.repeat(repeats), torch.arange(len(train))])
    targets = torch.cat([train.targets[labelled].repeat(repeats), torch.full((len(train),), -1)])
    return dataclasses.replace(train.select(index), targets=targets)


def semisup(start: StartingPoint, run_dir: str | Path, training: ClassifierTraining,
            settings: SemiSupervisedSettings, *, labels: float, resume: bool = False,
            quiet: bool = False) -> dict[str, Any]:
    """Train a copy of ``start``'s encoder with ``settings.method`` on a class-balanced fraction
    ``labels`` of the training labels (chosen by ``training.seed``) and every training image."""
    if training.label_smoothing:
        raise SelfsupError("label smoothing is not part of the semi-supervised methods; leave it at 0")
    train = start.splits.train
    labelled = label_index(train, labels, training.seed)
    torch.manual_seed(training.seed)
    learner = build_learner(settings, start.fresh_encoder(), len(start.data.classes), ImageInfo.of(start.data))
    ratio = learner.default_ratio if settings.ratio is None else settings.ratio
    dataset = semisup_training_set(train, labelled, ratio)
    learner.prepare(len(dataset), len(labelled) / len(train))
    steps_per_epoch = max(1, len(dataset) // training.batch_size)
    warnings = learner.schedule_warnings(training.steps or training.epochs * steps_per_epoch, steps_per_epoch)
    if not quiet and dist.is_main():
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    meta = classifier_meta(start.config, start.data, origin=f"semi-supervised {settings.method} "
                           f"({100 * labels:g}% labels)", classes=len(start.data.classes), labels=labels,
                           labelled_images=len(labelled), stage="semi-supervised", source=start.source,
                           semisup={**dataclasses.asdict(settings), "ratio": ratio, "weight": learner.weight,
                                    "weight_scale": learner.label_scale, "rampup_steps": learner.rampup_steps,
                                    "ramp": learner.ramp, "eval_ema": learner.eval_ema, "warnings": warnings})
    if learner.eval_ema:  # what evaluation reads back: the moving average, as the method's paper reports
        meta["encoder"]["prefix"] = "ema_model.encoder"
        meta["classifier"]["head_prefix"] = "ema_model.head"
    return fit_classifier(learner, dataset, start.splits.test, run_dir, training, meta=meta, resume=resume,
                          unlabelled=True, quiet=quiet)


def semisup_sweep(start: StartingPoint, out_dir: str | Path, training: ClassifierTraining,
                  settings: SemiSupervisedSettings, *, fractions: list[float], seeds: list[int],
                  quiet: bool = False) -> dict[str, Any]:
    """:func:`semisup` for every label fraction and seed, reported as the fine-tuning sweeps are
    (``out_dir/finetune.json`` / ``.md``; finished runs read back, interrupted ones resumed)."""
    def run(fraction: float, seed: int, run_dir: Path, resume: bool) -> dict[str, Any]:
        return semisup(start, run_dir, dataclasses.replace(training, seed=seed), settings, labels=fraction,
                       resume=resume, quiet=quiet)

    return label_sweep(run, out_dir, fractions, seeds, {"checkpoint": start.source, "method": settings.method,
                                                        "semisup": dataclasses.asdict(settings),
                                                        "settings": training})
