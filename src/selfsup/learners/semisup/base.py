"""What the semi-supervised methods share: the batch, the views, the ramp-up and the loss's shape.

A batch holds labelled images (target >= 0) and unlabelled ones (target -1) in the ratio the
recipe draws them (1 : mu, FixMatch's mu = 7 by default). Every method is cross-entropy on the
labelled images plus ``weight * ramp(step) * L_u`` on the unlabelled ones; the methods
differ only in L_u (and MixMatch, which mixes the labelled images too, in the whole loss).
Ramps are counted in optimiser steps, with each paper's length as the default, so a short run
stays in its ramp-up as the paper's would (the recipe warns when a run ends inside it).
The network is a :class:`~selfsup.recipes.classifier.Classifier` (trunk + linear head), so a
semi-supervised run reads back like a fine-tuned one. FixMatch and MixMatch evaluate an
exponential moving average of the weights (decay 0.999), as their papers report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...blocks.ema import ema_update, frozen_copy
from ...engine import Batch
from ...errors import SelfsupError
from ...views import Augment, AugmentSpec, ImageInfo
from ...views.randaugment import StrongAugment
from ..classifier import Classifier, classify_all

WEAK_AUGMENT = AugmentSpec(crop_scale=(0.6, 1.0), crop_ratio=(0.9, 1.1), jitter_p=0.0, grayscale_p=0.0)
"""Flip and a mild crop: our stand-in for FixMatch's weak flip-and-translate (up to 12.5%)."""


def sigmoid_rampup(progress: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = progress / length in [0, 1] (Laine & Aila 2017, Sec. 3.1); 1 when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(progress: float, length: float) -> float:
    """min(progress / length, 1) (MixMatch's ramp of lambda_u); 1 when length is 0."""
    return 1.0 if length <= 0 else min(max(progress / length, 0.0), 1.0)


RAMPS = {"sigmoid": sigmoid_rampup, "linear": linear_rampup}


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


@dataclass(frozen=True)
class Common:
    """The settings every semi-supervised learner takes; None takes the method's default."""

    weight: float | None = None
    """Weight of the unlabelled loss."""
    rampup_steps: int | None = None
    """Optimiser steps over which that weight ramps up (the method's paper's length)."""
    eval_ema: float | None = None
    """Decay of the evaluated moving average of the weights (0: the trained network)."""
    scale_by_label_fraction: bool = True
    """Methods that scale the weight by the labelled share M / N (their reference code) do so."""


class SemiSupervised(Classifier):
    """Trunk + linear head trained on ``CE(labelled) + weight * ramp(step) * L_u(unlabelled)``.

    Subclasses set the views they need (``weak_views``, ``strong_views``), their defaults
    (``default_weight``, ``default_rampup_steps`` and ``ramp`` shape, ``default_ratio`` mu,
    ``default_eval_ema``) and implement :meth:`unlabelled_loss`; :meth:`extra_inputs` go through
    the network in the same pass as the first weak view, so BatchNorm normalises them together
    (FixMatch's practice). ``scales_with_labels``: the weight is multiplied by the labelled share
    of the training images (Laine & Aila's code scales w_max by M / N), unless
    ``scale_by_label_fraction`` is off. ``eval_ema`` (decay) keeps an exponential moving average
    of the weights that evaluation uses (:meth:`predict`); 0 evaluates the trained network.
    A method's own settings are the keyword-only arguments of its constructor, which states the
    whole signature: ``(encoder, num_classes, image, common=Common(), *, threshold=0.95)``.
    """

    weak_views = 1
    strong_views = 0
    default_weight = 1.0
    default_rampup_steps = 0
    ramp = "sigmoid"
    default_ratio = 7.0
    default_eval_ema = 0.0
    scales_with_labels = False

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common()) -> None:
        super().__init__(encoder, num_classes, SemiViews(image, self.weak_views, self.strong_views))
        self.weight = self.default_weight if common.weight is None else common.weight
        self.rampup_steps = self.default_rampup_steps if common.rampup_steps is None else common.rampup_steps
        self.eval_ema = self.default_eval_ema if common.eval_ema is None else common.eval_ema
        if self.weight < 0 or self.rampup_steps < 0:
            raise SelfsupError(f"the unlabelled loss needs a weight >= 0 and a ramp-up of >= 0 steps, got "
                               f"{self.weight} and {self.rampup_steps}")
        if not 0.0 <= self.eval_ema < 1.0:
            raise SelfsupError(f"eval_ema is a decay in [0, 1) (0: evaluate the trained network), got {self.eval_ema}")
        self.scale_by_label_fraction = common.scale_by_label_fraction
        self.label_scale = 1.0
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        if self.eval_ema:
            self.ema_model = frozen_copy(nn.ModuleDict({"encoder": self.encoder, "head": self.head}))

    def prepare(self, dataset_size: int, label_fraction: float = 1.0) -> None:
        """Called once before training with the size of the training set and the labelled share of
        the training images (M / N)."""
        if self.scales_with_labels and self.scale_by_label_fraction:
            self.label_scale = label_fraction

    def unlabelled_weight(self, step: int | None = None) -> float:
        """The weight of L_u at ``step`` (default: now): weight x label scale x ramp."""
        step = int(self.steps_done) if step is None else step
        return self.weight * self.label_scale * RAMPS[self.ramp](step, self.rampup_steps)

    def schedule_warnings(self, total_steps: int, steps_per_epoch: int) -> list[str]:
        """What a run of ``total_steps`` cannot show of this method (ends inside its ramp, an EMA that
        still holds the initial weights)."""
        name, found = type(self).__name__, []
        if self.weight and self.rampup_steps >= total_steps:
            last = RAMPS[self.ramp](total_steps - 1, self.rampup_steps)  # the last step's forward is at total - 1
            found.append(f"{name}'s unlabelled weight ramps up over {self.rampup_steps} steps (the paper's length); "
                         f"this run has {total_steps}, so it ends at {100 * last:.1f}% of the weight: set the ramp "
                         "(--rampup-steps) for a run this short")
        if self.eval_ema and self.eval_ema ** total_steps > 0.05:
            found.append(f"{name} is evaluated as the moving average of its weights (decay {self.eval_ema:g}, as its "
                         f"paper), which after {total_steps} steps still holds {100 * self.eval_ema ** total_steps:.0f}% of "
                         "the initial network; test_top1_raw is the trained network's accuracy")
        return found

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the evaluated network: the moving average with ``eval_ema``, else the trained one."""
        if self.eval_ema:
            return self.ema_model["head"](self.ema_model["encoder"](x))
        return self.classify(x)

    @torch.no_grad()
    def test_accuracies(self, dataset, view: nn.Module) -> dict[str, float]:  # noqa: ANN001
        """Top-1 (%) of the evaluated network (``test_top1``) and, with an EMA, of the trained one."""
        results = {"test_top1": _top1(classify_all(self, dataset.images, view), dataset.targets)}
        if self.eval_ema:
            results["test_top1_raw"] = _top1(classify_all(self, dataset.images, view, raw=True), dataset.targets)
        return results

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.steps_done += 1
        if self.eval_ema:
            # FixMatch and MixMatch average every model variable, BatchNorm statistics included.
            ema_update(self.ema_model, nn.ModuleDict({"encoder": self.encoder, "head": self.head}), self.eval_ema,
                       buffers="average")

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
        weight = self.unlabelled_weight()
        return {"loss": supervised + weight * unsup, "loss_labelled": supervised.detach(),
                "loss_unlabelled": unsup.detach(), "unlabelled_weight": torch.tensor(weight), **logged}


def _top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == targets).float().mean().item()


class LabelsOnly(SemiSupervised):
    """The baseline at the same schedule: cross-entropy on the labelled images, nothing else
    (``ratio`` 0: batches of labelled images only; give it the methods' mu to see their labelled
    batch, the unlabelled images then counting for nothing)."""

    default_weight = 0.0
    default_ratio = 0.0
