"""Unsupervised Data Augmentation (Xie et al. 2020, "Unsupervised Data Augmentation for Consistency
Training", Sec. 2 and 3.2).

KL(p_weak || p_strong) between the prediction on a weak view (no gradient, sharpened with
``temperature`` 0.4) and on a strong one (RandAugment), counted only where the weak
prediction's confidence is at least ``threshold`` (0.8): UDA's confidence-based masking and
sharpening. lambda = 1, no ramp-up. (Training-signal annealing of the labelled loss is left out,
as the reference's CIFAR-10 script does; its code also evaluates a moving average of the weights,
decay 0.9999, which ``eval_ema`` turns on: off by default, since at that decay a run needs
tens of thousands of steps before the average forgets the initial network.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...engine import Batch
from ...views import ImageInfo
from .base import Common, SemiSupervised


class UDA(SemiSupervised):
    strong_views = 1
    default_weight = 1.0
    default_ratio = 7.0

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common(), *,
                 temperature: float = 0.4, threshold: float = 0.8) -> None:
        super().__init__(encoder, num_classes, image, common)
        self.temperature, self.threshold = temperature, threshold

    def extra_inputs(self, batch: Batch, unlabelled: torch.Tensor) -> list[torch.Tensor]:
        return [batch.views[1][unlabelled]]

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weak = logits[unlabelled].detach()
        mask = (weak.softmax(1).amax(1) >= self.threshold).float()
        target = (weak / self.temperature).log_softmax(1)
        kl = F.kl_div(extra[0].log_softmax(1), target, reduction="none", log_target=True).sum(1)
        return (kl * mask).mean(), {"mask_rate": mask.mean()}
