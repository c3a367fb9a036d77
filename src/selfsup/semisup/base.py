"""What the semi-supervised methods share: the batch, the views, the ramp-up and the loss's shape.

A batch holds labelled images (target >= 0) and unlabelled ones (target -1) in the ratio the
recipe draws them (1 : mu, FixMatch's mu = 7 by default). Every method is cross-entropy on the
labelled images plus ``weight * ramp(progress) * L_u`` on the unlabelled ones; the methods
differ only in L_u (and MixMatch, which mixes the labelled images too, in the whole loss).
The network is a :class:`~selfsup.recipes.classifier.Classifier` (trunk + linear head), so a
semi-supervised run reads back like a fine-tuned one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Batch
from ..errors import SelfsupError
from ..recipes.classifier import Classifier
from ..views import Augment, AugmentSpec, ImageInfo
from ..views.randaugment import StrongAugment

WEAK_AUGMENT = AugmentSpec(crop_scale=(0.6, 1.0), crop_ratio=(0.9, 1.1), jitter_p=0.0, grayscale_p=0.0)
"""Flip and a mild crop: our stand-in for FixMatch's weak flip-and-translate (up to 12.5%)."""


def sigmoid_rampup(progress: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = progress / length in [0, 1] (Laine & Aila 2017, Sec. 3.1); 1 when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def squared_error(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """||p - q||^2 summed over classes, averaged over images: the consistency of the Pi-model,
    temporal ensembling, Mean Teacher and MixMatch. (Their papers average over classes too, so
    their weights are ours times the number of classes.)"""
    return (p - q).pow(2).sum(1).mean()


class SemiViews(nn.Module):
    """``weak`` weakly augmented views of every image, then ``strong`` strongly augmented ones."""

    def __init__(self, image: ImageInfo, weak: int = 1, strong: int = 0) -> None:
        super().__init__()
        self.weak_views, self.strong_views = weak, strong
        self.weak = Augment(image, WEAK_AUGMENT)
        self.strong = StrongAugment(image, WEAK_AUGMENT) if strong else None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return ([self.weak(images) for _ in range(self.weak_views)]
                + [self.strong(images) for _ in range(self.strong_views)])


class SemiSupervised(Classifier):
    """Trunk + linear head trained on ``CE(labelled) + weight * ramp * L_u(unlabelled)``.

    Subclasses set the views they need (``weak_views``, ``strong_views``), their defaults
    (``default_weight``, ``default_rampup`` as a fraction of training, ``default_ratio`` mu) and
    implement :meth:`unlabelled_loss`; :meth:`extra_inputs` go through the network in the same
    pass as the first weak view, so BatchNorm normalises them together (FixMatch's practice).
    """

    weak_views = 1
    strong_views = 0
    default_weight = 1.0
    default_rampup = 0.0
    default_ratio = 7.0

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, *, weight: float | None = None,
                 rampup: float | None = None) -> None:
        super().__init__(encoder, num_classes, SemiViews(image, self.weak_views, self.strong_views))
        self.weight = self.default_weight if weight is None else weight
        self.rampup = self.default_rampup if rampup is None else rampup
        if self.weight < 0 or not 0 <= self.rampup <= 1:
            raise SelfsupError(f"the unlabelled loss needs a weight >= 0 and a ramp-up in [0, 1] of training, got "
                               f"{self.weight} and {self.rampup}")

    def prepare(self, dataset_size: int) -> None:
        """Called once with the size of the training set before training (temporal ensembling's memory)."""

    def extra_inputs(self, batch: Batch, unlabelled: torch.Tensor) -> list[torch.Tensor]:
        return []

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_u and what to log, from the first weak view's ``logits`` of every image and the logits
        of :meth:`extra_inputs`."""
        raise NotImplementedError

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        labelled = batch.targets >= 0
        unlabelled = ~labelled
        first = batch.views[0]
        extra = self.extra_inputs(batch, unlabelled)
        outputs = self.classify(torch.cat([first, *extra]) if extra else first).float()
        logits, *extra_logits = outputs.split([len(first)] + [len(e) for e in extra])
        supervised = (F.cross_entropy(logits[labelled], batch.targets[labelled]) if labelled.any()
                      else logits.sum() * 0.0)
        if unlabelled.any() and self.weight > 0:
            unsup, logged = self.unlabelled_loss(batch, logits, extra_logits, unlabelled, progress)
        else:
            unsup, logged = logits.sum() * 0.0, {}
        weight = self.weight * sigmoid_rampup(progress, self.rampup)
        return {"loss": supervised + weight * unsup, "loss_labelled": supervised.detach(),
                "loss_unlabelled": unsup.detach(), "unlabelled_weight": torch.tensor(weight), **logged}


class LabelsOnly(SemiSupervised):
    """The baseline at the same schedule: cross-entropy on the labelled images, nothing else."""

    default_weight = 0.0
    default_ratio = 0.0
