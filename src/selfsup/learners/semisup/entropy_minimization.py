"""Entropy minimisation (Grandvalet & Bengio 2005, "Semi-supervised Learning by Entropy Minimization").

L_u = the mean entropy of the predicted class distribution on the unlabelled images: the
decision boundary is pushed away from the dense regions of the data. The weight (0.1 here,
ours) is kept small; alone and large, it makes early confident mistakes permanent. No ramp-up,
as the paper.
"""
from __future__ import annotations

import torch

from ...engine import Batch
from .base import SemiSupervised


class EntropyMinimization(SemiSupervised):
    default_weight = 0.1

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_p = logits[unlabelled].log_softmax(1)
        entropy = -(log_p.exp() * log_p).sum(1).mean()
        return entropy, {}
