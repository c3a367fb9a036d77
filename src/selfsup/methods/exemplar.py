"""Exemplar-CNN: every training image is its own surrogate class.

Dosovitskiy, Springenberg, Riedmiller, Brox. "Discriminative Unsupervised Feature Learning
with Convolutional Neural Networks", NeurIPS 2014 (arXiv:1406.6909).
"""
from __future__ import annotations

import torch
from torch import nn

from ..engine import Batch
from ..views import ExemplarViews
from .base import Method, classification


class Exemplar(Method):
    """Exemplar-CNN (Dosovitskiy et al. 2014): classify heavy augmentations of each seed image.

    The surrogate class of an image is its dataset index, so there are as many classes as
    training images (the paper: 8000-32000 seed patches; use ``data.subset`` to choose how
    many). A linear classifier over the pooled features; heavy augmentation from
    :class:`selfsup.views.ExemplarViews` (crop and scale, rotation, colour).
    The classifier has one row per image: memory grows as N x D.
    Deviations: whole images instead of 32 px patches picked near strong gradients, and a fresh
    augmentation per visit instead of a fixed set per seed. ``data.subset`` is class-balanced, so
    on STL-10 the choice of seeds uses the labels of the labelled part.
    """

    views_class = ExemplarViews

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int) -> None:
        super().__init__(backbone, views)
        self.classifier = nn.Linear(backbone.num_features, num_images)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        return classification(self.classifier(self.backbone(batch.views[0])), batch.index)
