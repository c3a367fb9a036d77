"""Decoupled RotNet: rotation prediction that tolerates ambiguous images, plus a
rotation-irrelevant feature trained for instance discrimination.

Feng, Xu, Tao. "Self-Supervised Representation Learning by Rotation Feature Decoupling",
CVPR 2019.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import MemoryBank
from ..models.heads import mlp
from ..pretext import RotationViews
from .base import Method


class DecoupledRotNet(Method):
    """Decoupled RotNet (Feng et al. 2019): weighted rotation loss + rotation-irrelevant part.

    The backbone feature feeds (a) a rotation classifier and (b) a projection to a
    ``feature_dim`` unit vector, the rotation-irrelevant part. Loss =
    weighted CE(rotation) + ``distance_weight`` * mean ||f_r - mean_r f_r||^2 (the four
    rotations of an image should agree) + ``instance_weight`` * NCE(mean_r f_r vs. memory bank).

    Weights: the paper estimates, by positive-unlabeled learning before training, how
    ambiguous each image's rotation is, and weights the rotation loss down for ambiguous
    images. Here the estimate is online: an image's weight is the (detached) probability the
    classifier currently gives to the true rotation, averaged over its four copies, raised to
    ``ambiguity_power`` and normalised to mean 1 over the batch (0: plain RotNet weights).
    Instance discrimination as NPID: 4096 negatives, temperature 0.07, bank momentum 0.5.
    """

    views_class = RotationViews
    injected_args = ("backbone", "views", "num_images", "seed")

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int, seed: int = 0,
                 head_hidden_dim: int = 512, feature_dim: int = 128, ambiguity_power: float = 1.0,
                 distance_weight: float = 1.0, instance_weight: float = 1.0, num_negatives: int = 4096,
                 temperature: float = 0.07, bank_momentum: float = 0.5) -> None:
        super().__init__(backbone, views)
        self.classifier = mlp(backbone.num_features, head_hidden_dim, 4, 2)
        self.projector = nn.Linear(backbone.num_features, feature_dim)
        self.memory = MemoryBank(num_images, feature_dim, momentum=bank_momentum, num_negatives=num_negatives,
                                 temperature=temperature, seed=seed)
        self.ambiguity_power = ambiguity_power
        self.distance_weight, self.instance_weight = distance_weight, instance_weight

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        rotated, labels = views
        batch = index.shape[0]
        features = self.backbone(rotated)
        logits = self.classifier(features).float()
        per_copy = F.cross_entropy(logits, labels, reduction="none")
        with torch.no_grad():
            confidence = logits.softmax(1).gather(1, labels[:, None]).view(4, batch).mean(0)
            weight = confidence.pow(self.ambiguity_power)
            weight = weight / weight.mean().clamp_min(1e-8)
        rotation_loss = (per_copy.view(4, batch) * weight).mean()

        irrelevant = F.normalize(self.projector(features).float(), dim=1).view(4, batch, -1)
        center = irrelevant.mean(0)
        distance_loss = (irrelevant - center).square().sum(2).mean()
        instance = F.normalize(center, dim=1)
        instance_loss = self.memory.nce(instance, index, self.memory.sample_negatives())
        if self.training:
            self.memory.update(index, instance)
        loss = rotation_loss + self.distance_weight * distance_loss + self.instance_weight * instance_loss
        return {"loss": loss, "rotation_loss": rotation_loss.detach(), "instance_loss": instance_loss.detach()}
