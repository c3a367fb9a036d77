"""Temporal ensembling (Laine & Aila 2017, Sec. 2.2).

The target of an unlabelled image is the moving average of the network's past predictions
for it, Z <- alpha Z + (1 - alpha) z once per epoch (alpha = 0.6), corrected for its start
at zero: Z / (1 - alpha^t) after t updates. One pass per image and step; an image seen for
the first time has no target yet, so a run of under two epochs learns little from it (the
recipe warns). w_max = 30 on the class-averaged error is 3 on our class sum, scaled by the
labelled share M / N as in the reference code; the ramp is the Pi-model's (40,000 steps).
The memory (one row per training image) is part of the checkpoint, so a resumed run keeps it.
"""
from __future__ import annotations

import torch
from torch import nn

from ...engine import Batch
from ...views import ImageInfo
from ...errors import SelfsupError
from .base import Common, SemiSupervised


class TemporalEnsembling(SemiSupervised):
    default_weight = 3.0
    default_rampup_steps = 40_000
    scales_with_labels = True

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common(), *,
                 alpha: float = 0.6) -> None:
        super().__init__(encoder, num_classes, image, common)
        if not 0.0 <= alpha < 1.0:
            raise SelfsupError(f"temporal ensembling's alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.register_buffer("ensemble", torch.zeros(0, self.head.out_features))
        self.register_buffer("updates", torch.zeros(0, dtype=torch.long))

    def prepare(self, dataset_size: int, label_fraction: float = 1.0) -> None:
        super().prepare(dataset_size, label_fraction)
        self.ensemble = torch.zeros(dataset_size, self.head.out_features, device=self.head.weight.device)
        self.updates = torch.zeros(dataset_size, dtype=torch.long, device=self.head.weight.device)

    def schedule_warnings(self, total_steps: int, steps_per_epoch: int) -> list[str]:
        found = super().schedule_warnings(total_steps, steps_per_epoch)
        if total_steps < 2 * steps_per_epoch:
            found.append(f"temporal ensembling trains for {total_steps / steps_per_epoch:.2f} epochs: an unlabelled "
                         "image has a target only from its second visit, so its loss is zero for most of this run; "
                         "train for at least 2 epochs")
        return found

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(self.ensemble) == 0:
            raise SelfsupError("temporal ensembling needs prepare(dataset_size) before training")
        index = batch.index[unlabelled].to(self.ensemble.device)
        probabilities = logits[unlabelled].softmax(1)
        seen = self.updates[index]
        known = (seen > 0).float()
        target = self.ensemble[index] / (1 - self.alpha ** seen.clamp_min(1).float()).unsqueeze(1)
        loss = (probabilities - target).pow(2).sum(1).mul(known).mean()
        with torch.no_grad():
            self.ensemble[index] = self.alpha * self.ensemble[index] + (1 - self.alpha) * probabilities.detach()
            self.updates[index] += 1
        return loss, {"with_target": known.mean()}

