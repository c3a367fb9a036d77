"""RotNet: predict which of four rotations was applied to an image.

Gidaris, Singh, Komodakis. "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018 (arXiv:1803.07728).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.heads import mlp
from ..pretext import RotationViews
from .base import Method, classification


class Rotation(Method):
    """RotNet (Gidaris et al. 2018): 4-way classification of 0/90/180/270 degree rotations.

    All four rotations of every image are in the same batch (the paper's best setting,
    Sec. 3.2). The classifier on the pooled backbone features is ``head_layers`` deep
    (1: linear; the paper's non-linear heads for deeper probes: 2-3), hidden ``head_hidden_dim``.
    """

    views_class = RotationViews

    def __init__(self, backbone: nn.Module, views: nn.Module, *, head_hidden_dim: int = 512,
                 head_layers: int = 2) -> None:
        super().__init__(backbone, views)
        self.classifier = mlp(backbone.num_features, head_hidden_dim, 4, head_layers)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        rotated, labels = views
        return classification(self.classifier(self.backbone(rotated)), labels)
