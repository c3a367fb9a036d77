"""Jigsaw puzzles: recover which permutation shuffled the 3x3 tiles of an image.

Noroozi & Favaro. "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016 (arXiv:1603.09246).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import PositiveInt
from ..models.heads import mlp
from ..engine import Batch
from ..views import JigsawViews
from .base import Method, classification, tile_features


class Jigsaw(Method):
    """Jigsaw / context-free network (Noroozi & Favaro 2016): classify the tile permutation.

    Every tile goes through the same trunk (the backbone, shared weights), is projected to
    ``tile_dim`` (the paper's fc6, 512), the nine projections are concatenated in the shuffled
    order and an MLP (fc7 4096 -> fc8, here ``head_hidden_dim``) classifies the permutation
    among the set of the views (``views.num_permutations``; maximal minimal Hamming distance).
    Tiles never touch (a guaranteed gap plus random jitter), are normalised one by one and
    randomly gray (:class:`selfsup.views.JigsawViews`): the paper's guards against shortcuts.
    Deviations: fc7 is ``head_hidden_dim`` (1024) wide with BN instead of 4096; colour jitter is
    drawn per image, not per tile.
    """

    views_class = JigsawViews
    trains_on_tiles = True

    def __init__(self, backbone: nn.Module, views: nn.Module, *, tile_dim: PositiveInt = 512,
                 head_hidden_dim: PositiveInt = 1024) -> None:
        super().__init__(backbone, views)
        tiles = views.tiler.grid ** 2
        self.tile_projector = nn.Sequential(nn.Linear(backbone.num_features, tile_dim), nn.ReLU(inplace=True))
        self.classifier = mlp(tiles * tile_dim, head_hidden_dim, len(views.permutations), 2)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        tiles, labels = batch.views
        per_tile = self.tile_projector(tile_features(self.backbone, tiles))   # (B, 9, tile_dim)
        return classification(self.classifier(per_tile.flatten(1)), labels)
