"""Barlow Twins: make the cross-correlation of two views' embeddings the identity.

Zbontar, Jing, Misra, LeCun, Deny. "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021 (arXiv:2103.03230).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import NonNegative, PositiveInt
from ..blocks import forward_views
from ..engine import Batch
from ..losses import barlow_twins
from ..models.heads import mlp
from .base import Method


class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al. 2021): invariance on the diagonal, redundancy reduction off it.

    views -> backbone -> projector -> :func:`selfsup.losses.barlow_twins` over the global batch
    (each dimension batch-normalised over all processes' images; exact under DDP).

    Defaults from the paper: projector of 3 linear layers of 8192 with BN and ReLU between them,
    lambda = 5e-3 (``off_diagonal_weight``). Small-data presets use 2048 (solo-learn's CIFAR
    setting): the loss grows with the square of the width, and 8192 x 8192 correlations are slow
    on a CPU. The presets train with the paper's LARS and its two rates: the weights at ``optim.lr``,
    the biases and BatchNorm parameters (not LARS-adapted, not decayed) at 0.024 of it
    (``optim.exempt_lr_scale``: 0.0048 against 0.2). Each view goes through the network in its own
    pass, as in the official code, so BatchNorm normalises each view by its own statistics;
    ``views_in_one_pass`` normalises both together (fewer, larger batches; a deviation). The online
    backbone is evaluated.
    """

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        proj_dim: PositiveInt = 8192,
        proj_layers: PositiveInt = 3,
        off_diagonal_weight: NonNegative = 5e-3,
        views_in_one_pass: bool = False,
    ) -> None:
        super().__init__(backbone, views)
        self.views_in_one_pass = views_in_one_pass
        self.projector = mlp(backbone.num_features, proj_dim, proj_dim, proj_layers)
        self.off_diagonal_weight = off_diagonal_weight

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the projection the loss correlates."""
        return self.projector(self.backbone(x)).float()

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        proj_a, proj_b = forward_views(lambda x: self.projector(self.backbone(x)), batch.views, self.views_in_one_pass)
        return {"loss": barlow_twins(proj_a, proj_b, self.off_diagonal_weight)}
