"""Fine-tuning a pretrained encoder on (a fraction of) the labels, and loading the classifier back.

SimCLR v2 (Chen et al. 2020b, "Big Self-Supervised Models are Strong Semi-Supervised Learners",
Sec. 2) fine-tunes from the middle layer of its 3-layer projection head rather than from the
backbone's output (``head_layers=1``); with 1% and 10% of the labels that was worth a few
points. The fine-tuned network is the teacher of the third stage (:mod:`.distill`).

A fine-tuned checkpoint is a run directory like a pretraining run's: its ``encoder`` entry
says where the trunk's weights are and how many head layers it keeps, so ``selfsup eval`` and
:func:`load_encoder` read it like any other checkpoint, and :func:`load_classifier` rebuilds
trunk + linear head.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from typing import Any


from ..config import RunConfig
from ..data import label_index, load_splits
from ..learners import Classifier, classifier_views
from ..views import ImageInfo
from .classifier import ClassifierTraining, fit_classifier
from .loading import RANDOM_INIT, classifier_meta, fresh_network, load_encoder
from .sweep import label_sweep


def finetune(path: str | Path, run_dir: str | Path, settings: ClassifierTraining, *, head_layers: int = 0,
             labels: float = 1.0, overrides: list[str] = (), resume: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Fine-tune the encoder of checkpoint ``path`` (plus ``head_layers`` of its projection head)
    with a linear head on a class-balanced fraction ``labels`` of the training labels."""
    encoder, config, source = load_encoder(path, overrides, head_layers)
    data = source.data
    splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
    train = splits.train.select(label_index(splits.train, labels, settings.seed))
    torch.manual_seed(settings.seed)  # the head's initialisation: a process's own seed is random
    model = Classifier(encoder, len(data.classes), classifier_views(ImageInfo.of(data)), settings.label_smoothing)
    meta = classifier_meta(config, data, head_layers or source.encoder.head_layers, classes=len(data.classes),
                           labels=labels, labelled_images=len(train), source=source.source, stage="fine-tuned")
    return fit_classifier(model, train, splits.test, run_dir, settings, meta=meta, resume=resume, quiet=quiet)


def supervised(config: RunConfig, run_dir: str | Path, settings: ClassifierTraining, *, labels: float = 1.0,
               resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """The backbone of ``config`` trained from random initialisation (seeded by ``settings.seed``)
    on a class-balanced fraction ``labels`` of its training labels: the baseline pretraining is
    measured against, and a supervised N_pre (with ``data.label_noise``, ClusterFit's study).
    The checkpoint reads back like a fine-tuned one (:func:`load_classifier`, distillation,
    ClusterFit, ``selfsup eval``)."""
    splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
    data = splits.info()
    train = splits.train.select(label_index(splits.train, labels, settings.seed))
    _, encoder = fresh_network(config, [], data, settings.seed)
    model = Classifier(encoder, len(data.classes), classifier_views(ImageInfo.of(data)), settings.label_smoothing)
    noise = f" ({100 * config.data.label_noise:g}% label noise)" if config.data.label_noise else ""
    meta = classifier_meta(config, data, origin="supervised" + noise, classes=len(data.classes), labels=labels,
                           labelled_images=len(train), label_noise=config.data.label_noise, stage="supervised")
    return fit_classifier(model, train, splits.test, run_dir, settings, meta=meta, resume=resume, quiet=quiet)


def finetune_sweep(path: str | Path, out_dir: str | Path, settings: ClassifierTraining, *,
                   fractions: list[float], seeds: list[int], head_layers: int = 0, overrides: list[str] = (),
                   quiet: bool = False) -> dict[str, Any]:
    """:func:`finetune` for every label fraction and seed (the seed picks the labels and seeds the
    training), each in ``out_dir/<pct>pct-seed<s>``; test top-1 per run, and mean and standard
    deviation per fraction, in ``out_dir/finetune.json`` and ``finetune.md``.

    Finished runs are read back, interrupted ones resumed: a killed sweep continues where it was.
    """
    def run(fraction: float, seed: int, run_dir: Path, resume: bool) -> dict[str, Any]:
        return finetune(path, run_dir, dataclasses.replace(settings, seed=seed), head_layers=head_layers,
                        labels=fraction, overrides=overrides, resume=resume, quiet=quiet)

    return label_sweep(run, out_dir, fractions, seeds, {"checkpoint": str(Path(path).resolve()),
                                                        "head_layers": head_layers, "settings": settings})


def supervised_sweep(config: RunConfig, out_dir: str | Path, settings: ClassifierTraining, *,
                     fractions: list[float], seeds: list[int], quiet: bool = False) -> dict[str, Any]:
    """:func:`supervised` (random initialisation) for every label fraction and seed, reported as
    :func:`finetune_sweep` reports: the baseline row of a few-label table."""
    def run(fraction: float, seed: int, run_dir: Path, resume: bool) -> dict[str, Any]:
        return supervised(config, run_dir, dataclasses.replace(settings, seed=seed), labels=fraction, resume=resume,
                          quiet=quiet)

    return label_sweep(run, out_dir, fractions, seeds, {"checkpoint": RANDOM_INIT, "settings": settings})
