"""RotNet: predict which of four rotations was applied to an image.

Gidaris, Singh, Komodakis. "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018 (arXiv:1803.07728).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import PositiveInt
from ..models.heads import mlp
from ..engine import Batch
from ..views import RotationViews
from .base import Method, classification


class Rotation(Method):
    """RotNet (Gidaris et al. 2018): 4-way classification of 0/90/180/270 degree rotations.

    All four rotations of every image are in the same batch (the paper's best setting,
    Sec. 3.2). The pretext classifier on the pooled backbone features is an MLP of
    ``head_layers`` layers (hidden ``head_hidden_dim``); the paper's own network ends in its
    classifier, and its deeper non-linear classifiers are evaluation probes, not this head.
    Paper's CIFAR recipe (presets): SGD lr 0.1 at batch 128, momentum 0.9, weight decay 5e-4.
    """

    views_class = RotationViews

    def __init__(self, backbone: nn.Module, views: nn.Module, *, head_hidden_dim: PositiveInt = 512,
                 head_layers: PositiveInt = 2) -> None:
        super().__init__(backbone, views)
        self.classifier = mlp(backbone.num_features, head_hidden_dim, 4, head_layers)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        rotated, labels = batch.views
        return classification(self.classifier(self.backbone(rotated)), labels)
