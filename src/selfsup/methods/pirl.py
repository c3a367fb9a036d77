"""PIRL: representations that do not change under a pretext transform.

Misra & van der Maaten. "Self-Supervised Learning of Pretext-Invariant Representations",
CVPR 2020 (arXiv:1912.01991).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Fraction, Positive, PositiveInt
from ..blocks import MemoryBank
from ..engine import Batch
from ..views import PirlViews
from .base import Method, tile_features


class PIRL(Method):
    """PIRL (Misra & van der Maaten 2020): I and its transform I^t should map to the same point.

    f: backbone(I) -> linear -> 128-d. g: for jigsaw, each of the 9 tiles of I^t through the
    backbone -> linear (128 each), concatenated in the shuffled order -> linear -> 128-d;
    for rotation, backbone(I^t) -> linear -> 128-d. Both L2-normalised.
    Loss (eq. 5) = lambda * NCE(m_I, g(v_I^t)) + (1 - lambda) * NCE(m_I, f(v_I)) against a
    memory bank m of f's moving average (momentum 0.5), with negatives from the bank
    (paper: 32000, lambda = 0.5, tau = 0.07). Both terms share one set of negatives per step;
    with the default per-batch NCE constant each term estimates its own Z (VISSL draws negatives
    per sample and term, and fixes one Z on the first batch: ``normalizer="fixed"``; sharing a
    per-batch Z between the terms made the loss swing by tens of nats on a fixed batch).
    The transform (``views.transform``: jigsaw, rotation, jigsaw+rotation) draws jigsaw
    permutations from all 9!: they are inputs here, never classes. The tiles run through the
    trunk before the image, as in VISSL; evaluation recalibrates BatchNorm on full images
    (``trains_on_tiles``), since the running statistics are half tile statistics.
    """

    views_class = PirlViews
    trains_on_tiles = True

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int, seed: int = 0,
                 feature_dim: PositiveInt = 128, loss_lambda: Fraction = 0.5, num_negatives: PositiveInt = 32000,
                 temperature: Positive = 0.07, bank_momentum: Fraction = 0.5, normalizer: Literal["fixed", "batch"] = "batch") -> None:
        super().__init__(backbone, views)
        tiles = views.tiler.grid ** 2 if views.tiler is not None else 0
        self.f = nn.Linear(backbone.num_features, feature_dim)
        self.g_input = nn.Linear(backbone.num_features, feature_dim)  # each tile, or the rotated image
        self.g = nn.Linear(tiles * feature_dim, feature_dim) if tiles else None
        self.memory = MemoryBank(num_images, feature_dim, momentum=bank_momentum, num_negatives=num_negatives,
                                 temperature=temperature, normalizer=normalizer, seed=seed)
        self.loss_lambda = loss_lambda

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> f(v_I), the L2-normalised embedding the memory bank averages."""
        return F.normalize(self.f(self.backbone(x)).float(), dim=1)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        (image, transformed), index = batch.views, batch.index
        if transformed.ndim == 5:  # jigsaw tiles (B, 9, C, t, t)
            v_transformed = self.g(self.g_input(tile_features(self.backbone, transformed)).flatten(1))
        else:
            v_transformed = self.g_input(self.backbone(transformed))
        v_transformed = F.normalize(v_transformed.float(), dim=1)
        v_image = self.embed(image)
        negatives = self.memory.sample_negatives()
        invariance = self.memory.nce(v_transformed, index, negatives)
        anchor = self.memory.nce(v_image, index, negatives)
        if self.training:
            self.memory.update(index, v_image)
        loss = self.loss_lambda * invariance + (1 - self.loss_lambda) * anchor
        return {"loss": loss, "invariance_loss": invariance.detach()}
