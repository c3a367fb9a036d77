"""FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", Algorithm 1).

For each unlabelled image: the prediction on a weak view (no gradient) becomes a hard label if
its probability is at least ``threshold`` (0.95); the strong view (RandAugment + Cutout,
:mod:`selfsup.views.randaugment`) is trained on it with cross-entropy. Images below the
threshold contribute nothing (the mean is over all unlabelled images, as in the paper).
lambda_u = 1, mu = 7 unlabelled images per labelled one, no ramp-up. Evaluated: the moving
average of the weights (decay 0.999), as the paper's numbers (``eval_ema``; 0: the trained network).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...engine import Batch
from ...views import ImageInfo
from .base import Common, SemiSupervised


class FixMatch(SemiSupervised):
    strong_views = 1
    default_weight = 1.0
    default_ratio = 7.0
    default_eval_ema = 0.999

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common(), *,
                 threshold: float = 0.95) -> None:
        super().__init__(encoder, num_classes, image, common)
        self.threshold = threshold

    def extra_inputs(self, batch: Batch, unlabelled: torch.Tensor) -> list[torch.Tensor]:
        return [batch.views[1][unlabelled]]

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        confidence, pseudo = logits[unlabelled].detach().softmax(1).max(1)
        mask = (confidence >= self.threshold).float()
        loss = (F.cross_entropy(extra[0], pseudo, reduction="none") * mask).mean()
        return loss, {"mask_rate": mask.mean()}
