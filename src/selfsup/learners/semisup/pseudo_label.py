"""Pseudo-labels (Lee 2013, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method").

The network's own most probable class on an unlabelled image is its label for this step,
trained with cross-entropy. As later work does (the realistic-evaluation baseline of Oliver et
al. 2018, FixMatch's ablation), only predictions of probability >= ``threshold`` (0.95) count,
at weight 1, ramped up linearly over 419,430 steps: that baseline's first 40% of 2^20 steps, as
MixMatch's code runs it (Lee anneals his weight from 0 to 3 between two epochs of his MNIST runs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...engine import Batch
from ...views import ImageInfo
from .base import Common, SemiSupervised


class PseudoLabel(SemiSupervised):
    default_weight = 1.0
    default_rampup_steps = 419_430
    ramp = "linear"

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common(), *,
                 threshold: float = 0.95) -> None:
        super().__init__(encoder, num_classes, image, common)
        self.threshold = threshold

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ours = logits[unlabelled]
        confidence, pseudo = ours.detach().softmax(1).max(1)
        mask = (confidence >= self.threshold).float()
        loss = (F.cross_entropy(ours, pseudo, reduction="none") * mask).mean()
        return loss, {"mask_rate": mask.mean()}
