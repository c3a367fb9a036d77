"""Distilling a classifier into a student, on unlabelled images: SimCLR v2's third stage.

Chen et al. 2020b ("Big Self-Supervised Models are Strong Semi-Supervised Learners", Sec. 2)
pretrain, fine-tune on few labels, then train a student (the same network, or a smaller one)
on the fine-tuned teacher's predictions over the unlabelled images; a student of the
teacher's size came out better than its teacher. The student is fitted by the classifier
recipe (:func:`~selfsup.recipes.fit_classifier`); only its loss differs
(:func:`selfsup.losses.distillation`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import apply_overrides, resolve
from ..data import load_splits
from ..engine import Batch
from ..errors import SelfsupError
from ..losses import distillation
from ..views import ImageInfo
from .classifier import (Classifier, ClassifierTraining, backbone_changes, classifier_meta, classifier_views,
                         fit_classifier, fresh_network)
from .finetune import label_index, load_classifier


class Distiller(Classifier):
    """A student classifier trained on a frozen teacher's softened predictions of the same view.

    Defaults from SimCLR v2: temperature 1 and no label term (``teacher_weight=1``), so no label
    is needed. The teacher is never trained: no gradient, not in the parameter groups, always in
    evaluation mode (its BatchNorm statistics stay those it was fine-tuned with).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, views: nn.Module, teacher: Classifier, *,
                 temperature: float = 1.0, teacher_weight: float = 1.0) -> None:
        super().__init__(encoder, num_classes, views)
        if temperature <= 0:
            raise SelfsupError(f"the distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= teacher_weight <= 1.0:
            raise SelfsupError(f"the teacher's weight must be in [0, 1], got {teacher_weight}")
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature, self.teacher_weight = temperature, teacher_weight

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        view = batch.views[0]
        with torch.no_grad():
            teacher_logits = self.teacher.classify(view).float()
        logits = self.classify(view).float()
        loss = distillation(logits, teacher_logits, self.temperature, batch.targets, self.teacher_weight)
        agreement = (logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return {"loss": loss, "teacher_agreement": agreement}


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
    teacher, state = load_classifier(teacher_path, overrides)
    data = state["data"]
    config, encoder = fresh_network(resolve(apply_overrides(state["config"], list(overrides))), student, data,
                                    settings.seed)
    image = ImageInfo.of(data)
    model = Distiller(encoder, len(data["classes"]), classifier_views(image), teacher, temperature=temperature,
                      teacher_weight=teacher_weight)
    splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
    if config.data.subset is not None:  # the pool of images the student learns from (data.subset)
        splits.train = splits.train.balanced_subset(config.data.subset, settings.seed)
    # Every image trains the student; only the chosen fraction keeps its label.
    targets = torch.full_like(splits.train.targets, -1)
    if labels > 0:
        chosen = label_index(splits.train, labels, settings.seed)
        targets[chosen] = splits.train.targets[chosen]
    train = dataclasses.replace(splits.train, targets=targets)
    meta = classifier_meta(config, data, origin="distilled student", classes=len(data["classes"]), labels=labels,
                           stage="distilled", teacher=str(Path(state["path"]).resolve()), temperature=temperature,
                           teacher_weight=teacher_weight)
    return fit_classifier(model, train, splits.test, run_dir, settings, meta=meta, resume=resume,
                          unlabelled=True, quiet=quiet)
