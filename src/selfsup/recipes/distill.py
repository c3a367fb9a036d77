"""Distilling a classifier into a student, on unlabelled images: SimCLR v2's third stage.

Chen et al. 2020b ("Big Self-Supervised Models are Strong Semi-Supervised Learners", Sec. 2)
pretrain, fine-tune on few labels, then train a student (the same network, or a smaller one)
on the fine-tuned teacher's predictions over the unlabelled images; a student of the
teacher's size came out better than its teacher. The student (:class:`~selfsup.learners.Distiller`)
is fitted by the classifier recipe (:func:`~selfsup.recipes.fit_classifier`); only its loss
differs (:func:`selfsup.losses.distillation`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..config import apply_overrides, resolve
from ..data import label_index, load_splits
from ..errors import SelfsupError
from ..learners import Distiller, classifier_views
from ..views import ImageInfo
from .classifier import ClassifierTraining, fit_classifier
from .loading import backbone_changes, classifier_meta, fresh_network, load_classifier


def distill(teacher_path: str | Path, run_dir: str | Path, settings: ClassifierTraining, *,
            student: list[str] = (), temperature: float = 1.0, teacher_weight: float = 1.0, labels: float = 0.0,
            overrides: list[str] = (), resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train a fresh student on every training image with the classifier of ``teacher_path``.

    ``student``: overrides of the teacher's ``backbone`` section (e.g. ``backbone.width=16``);
    none gives a student of the teacher's backbone (without its head layers). ``labels``: the
    class-balanced fraction of the training labels the label term may use (0: none, and then
    ``teacher_weight`` must be 1). ``data.subset`` (in ``overrides``) draws the images the
    student learns from: a class-balanced subset of that size.
    """
    if settings.label_smoothing:
        raise SelfsupError("label smoothing is distillation from a uniform teacher; a distilled student has a real "
                           "one (set the teacher's share with --teacher-weight)")
    if labels == 0.0 and teacher_weight < 1.0:
        raise SelfsupError(f"a label term (teacher_weight {teacher_weight} < 1) needs labels: give a label fraction")
    student = backbone_changes(student)
    teacher, source = load_classifier(teacher_path, overrides)
    data = source.data
    config, encoder = fresh_network(resolve(apply_overrides(source.config, list(overrides))), student, data,
                                    settings.seed)
    model = Distiller(encoder, len(data.classes), classifier_views(ImageInfo.of(data)), teacher,
                      temperature=temperature, teacher_weight=teacher_weight)
    splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
    if config.data.subset is not None:  # the pool of images the student learns from (data.subset)
        splits.train = splits.train.balanced_subset(config.data.subset, settings.seed)
    # Every image trains the student; only the chosen fraction keeps its label.
    targets = torch.full_like(splits.train.targets, -1)
    if labels > 0:
        chosen = label_index(splits.train, labels, settings.seed)
        targets[chosen] = splits.train.targets[chosen]
    train = dataclasses.replace(splits.train, targets=targets)
    meta = classifier_meta(config, data, origin="distilled student", classes=len(data.classes), labels=labels,
                           stage="distilled", teacher=source.source, temperature=temperature,
                           teacher_weight=teacher_weight)
    return fit_classifier(model, train, splits.test, run_dir, settings, meta=meta, resume=resume,
                          unlabelled=True, quiet=quiet)
