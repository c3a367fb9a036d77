"""Counting visual primitives: the features of an image equal the sum over its tiles.

Noroozi, Pirsiavash, Favaro. "Representation Learning by Learning to Count", ICCV 2017
(arXiv:1708.06734).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Positive, PositiveInt
from ..engine import Batch
from ..views import CountingViews
from .base import Method, tile_features


class Counting(Method):
    """Counting (Noroozi et al. 2017): phi(D(x)) = sum_j phi(T_j(x)), with a contrastive margin.

    phi = ReLU(linear(backbone)) counts ``count_dim`` primitives (paper: 1000) and is
    non-negative. D is a 2x downsampling and T_1..T_4 the 2x2 tiles, all at half size
    (:class:`selfsup.views.CountingViews`). Loss (eq. 5) =
    ||phi(D(x)) - sum_j phi(T_j(x))||^2 + max(0, M - ||phi(D(y)) - sum_j phi(T_j(x))||^2)
    where y is another image of the batch: the second term rules out the trivial phi = 0.
    Margin M = 10 as in the paper. D is always an antialiased bilinear downsampling (the paper
    varies the resampling method against a shortcut through its artefacts).
    """

    views_class = CountingViews
    trains_on_tiles = True

    def __init__(self, backbone: nn.Module, views: nn.Module, *, count_dim: PositiveInt = 1000, margin: Positive = 10.0) -> None:
        super().__init__(backbone, views)
        self.counter = nn.Sequential(nn.Linear(backbone.num_features, count_dim), nn.ReLU())
        self.margin = margin

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        down, tiles = batch.views
        batch = down.shape[0]
        # One trunk pass for the downsampled images and the tiles: same size, one batch.
        counts = self.counter(tile_features(self.backbone, torch.cat([down[:, None], tiles], dim=1)).flatten(0, 1))
        counts = counts.float().view(batch, 5, -1)
        whole, tile_sum = counts[:, 0], counts[:, 1:].sum(1)
        other = whole.roll(1, dims=0)  # another image of the batch
        match = (whole - tile_sum).square().sum(1)
        contrast = F.relu(self.margin - (other - tile_sum).square().sum(1))
        return {"loss": (match + contrast).mean(), "match": match.mean().detach()}
