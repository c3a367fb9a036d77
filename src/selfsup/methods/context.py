"""Context prediction: where does a patch lie relative to the centre patch?

Doersch, Gupta, Efros. "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015 (arXiv:1505.05192).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import PositiveInt
from ..models.heads import mlp
from ..engine import Batch
from ..views import PatchPairViews
from .base import Method, classification, tile_features


class ContextPrediction(Method):
    """Relative patch location (Doersch et al. 2015): 8-way classification of a neighbour's position.

    The centre patch and one of its eight neighbours (never touching: a gap of at least
    ``views.tiles.min_gap_px`` plus jitter, :class:`selfsup.views.PatchPairViews`) go through the
    shared trunk; their features are
    concatenated (the paper's fc6 pair -> fc7 -> fc8) and classified into the 8 positions.
    Deviations: the pair always comes from a 3x3 grid over the whole crop (the paper samples
    the patch position anywhere in the image), and random grayscale of whole images
    (``views.tiles.grayscale_p``) stands in for the paper's colour dropping / projection against
    chromatic aberration.
    """

    views_class = PatchPairViews
    trains_on_tiles = True

    def __init__(self, backbone: nn.Module, views: nn.Module, *, head_hidden_dim: PositiveInt = 1024) -> None:
        super().__init__(backbone, views)
        self.classifier = mlp(2 * backbone.num_features, head_hidden_dim, 8, 2)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        pairs, labels = batch.views
        return classification(self.classifier(tile_features(self.backbone, pairs).flatten(1)), labels)
