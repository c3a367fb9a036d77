"""Decoupled RotNet: rotation prediction that tolerates ambiguous images, plus a
rotation-irrelevant feature trained for instance discrimination.

Feng, Xu, Tao. "Self-Supervised Representation Learning by Rotation Feature Decoupling",
CVPR 2019.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Fraction, NonNegative, Positive, PositiveInt
from ..blocks import MemoryBank
from ..engine import Batch
from ..models.heads import mlp
from ..views import RotationViews
from .base import Method


class DecoupledRotNet(Method):
    """Decoupled RotNet (Feng et al. 2019): weighted rotation loss + a rotation-irrelevant part.

    ``variant="paper"`` (default), as the paper and its code do it:

    - the backbone feature is split in two halves; the rotation classifier sees the first,
      the second is the rotation-irrelevant part f (no projection);
    - distance loss: mean squared error between each rotated copy's f and the (stop-gradient)
      mean of the image's four copies;
    - instance loss: NCE of normalise(linear(mean of the 4 copies' f)) against a memory bank
      (NPID: 4096 negatives, temperature 0.07, momentum 0.5); weights 1 / 1 / 1;
    - rotation loss weights: 1 for the upright copy, 1 - p^gamma (gamma 2) for a rotated copy,
      where p is the probability that it looks upright, active only for the last part of
      training (the paper: epochs 210-245 of 245, ``weighting_start`` 0.857).
      The paper computes p beforehand with a separately trained positive-unlabelled (PU)
      classifier (upright copies labelled, rotated ones unlabelled) and ships it as a file.
      Here a PU head on detached features learns upright-vs-rotated during training, and p is
      Elkan & Noto's (KDD 2008) estimate P(s=1|x) / c with the labelling rate c taken from the
      image's own upright copy: a copy that the head cannot tell from its original gets p = 1.

    ``variant="online"``: the whole feature feeds both the classifier and a 128-d normalised
    projection; distance = squared distance of the projections to their mean; the rotation
    loss of each image is weighted, from the first step, by the classifier's own confidence in
    the true rotation (averaged over the four copies, to the power ``ambiguity_power``,
    normalised to mean 1).
    """

    views_class = RotationViews

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int, seed: int = 0,
                 variant: Literal["paper", "online"] = "paper", head_hidden_dim: PositiveInt = 512, feature_dim: PositiveInt = 128,
                 gamma: NonNegative = 2.0, weighting_start: Fraction = 210 / 245, ambiguity_power: NonNegative = 1.0,
                 distance_weight: NonNegative = 1.0, instance_weight: NonNegative = 1.0, num_negatives: PositiveInt = 4096,
                 temperature: Positive = 0.07, bank_momentum: Fraction = 0.5) -> None:
        super().__init__(backbone, views)
        features = backbone.num_features
        self.variant = variant
        self.split = features // 2 if variant == "paper" else features
        invariant = features - self.split if variant == "paper" else features
        self.classifier = mlp(self.split, head_hidden_dim, 4, 2)
        self.projector = nn.Linear(invariant, feature_dim)
        self.pu_head = nn.Linear(features, 1) if variant == "paper" else None
        self.memory = MemoryBank(num_images, feature_dim, momentum=bank_momentum, num_negatives=num_negatives,
                                 temperature=temperature, seed=seed)
        self.gamma, self.weighting_start, self.ambiguity_power = gamma, weighting_start, ambiguity_power
        self.distance_weight, self.instance_weight = distance_weight, instance_weight

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the normalised instance embedding of the rotation-irrelevant part."""
        return F.normalize(self.projector(self.backbone(x)[:, -self.projector.in_features:]).float(), dim=1)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        (rotated, labels), index = batch.views, batch.index
        size = index.shape[0]
        features = self.backbone(rotated).float()                         # (4B, D), rotation-major
        logits = self.classifier(features[:, :self.split]).float()
        per_copy = F.cross_entropy(logits, labels, reduction="none")
        out: dict[str, torch.Tensor] = {}
        if self.variant == "paper":
            pu_logits = self.pu_head(features.detach()).squeeze(1)
            out["pu_loss"] = F.binary_cross_entropy_with_logits(pu_logits, (labels == 0).float())
            with torch.no_grad():
                looks_upright = torch.sigmoid(pu_logits).view(4, size)
                p = (looks_upright / looks_upright[0].clamp_min(1e-6)).clamp(0, 1)
                weight = (1 - p.pow(self.gamma)).view(-1)
                weight[labels == 0] = 1.0
                if progress < self.weighting_start:
                    weight = torch.ones_like(weight)
            rotation_loss = (per_copy * weight).mean()
            invariant = features[:, self.split:].view(4, size, -1)
            center = invariant.mean(0)
            distance_loss = F.mse_loss(invariant, center.detach().expand_as(invariant))
            instance = F.normalize(self.projector(center), dim=1)
        else:
            with torch.no_grad():
                confidence = logits.softmax(1).gather(1, labels[:, None]).view(4, size).mean(0)
                weight = confidence.pow(self.ambiguity_power)
                weight = weight / weight.mean().clamp_min(1e-8)
            rotation_loss = (per_copy.view(4, size) * weight).mean()
            irrelevant = F.normalize(self.projector(features), dim=1).view(4, size, -1)
            center = irrelevant.mean(0)
            distance_loss = (irrelevant - center).square().sum(2).mean()
            instance = F.normalize(center, dim=1)
        instance_loss = self.memory.nce(instance, index, self.memory.sample_negatives())
        if self.training:
            self.memory.update(index, instance)
        loss = rotation_loss + self.distance_weight * distance_loss + self.instance_weight * instance_loss
        if "pu_loss" in out:
            loss = loss + out["pu_loss"]
        return {"loss": loss, "rotation_loss": rotation_loss.detach(), "instance_loss": instance_loss.detach(),
                **{k: v.detach() for k, v in out.items()}}
