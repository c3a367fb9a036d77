"""The Pi-model (Laine & Aila 2017, "Temporal Ensembling for Semi-Supervised Learning", Sec. 2.1).

Two stochastic passes (two augmentations) of every unlabelled image should predict the same:
L_u = ||softmax(z1) - softmax(z2)||^2, gradient through both. The weight ramps up along a
Gaussian curve over the paper's first 80 epochs of CIFAR-10 (500 steps of 100 images each:
40,000 steps). The paper's w_max = 100 on the class-averaged error is 10 on our class sum (10
classes), scaled as in the reference code by the labelled share M / N of the training images
(``scale_by_label_fraction``): 0.1 at 1% of the labels.
"""
from __future__ import annotations

import torch

from ...engine import Batch
from .base import SemiSupervised, squared_error


class PiModel(SemiSupervised):
    weak_views = 2
    default_weight = 10.0
    default_rampup_steps = 40_000
    scales_with_labels = True

    def extra_inputs(self, batch: Batch, unlabelled: torch.Tensor) -> list[torch.Tensor]:
        return [batch.views[1][unlabelled]]

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return squared_error(logits[unlabelled].softmax(1), extra[0].softmax(1)), {}
