"""BYOL: predict a slowly moving target network's projection of another view, no negatives.

Grill et al. "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020 (arXiv:2006.07733).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import Fraction, PositiveInt
from ..blocks import Teacher, forward_views, momentum_schedule
from ..engine import Batch
from ..losses import negative_cosine
from ..models.heads import mlp
from .base import Method


class BYOL(Method):
    """BYOL (Grill et al. 2020): online backbone + projector + predictor regress an EMA target.

    Both views go through the online network and the target network (a moving average of
    backbone and projector); the loss is BYOL's symmetrised ``2 - 2 cos(q_a, z'_b) + 2 - 2
    cos(q_b, z'_a)`` (eq. 2 and its swapped twin, summed as in the paper: 0 at best, 8 at worst).

    Defaults from the paper: projector and predictor MLPs 4096 -> 256 with BN, target momentum
    0.996 rising to 1 on a cosine schedule over training (``base_momentum``, ``final_momentum``).
    The asymmetric augmentations (blur 1.0 / 0.1, solarize 0 / 0.2) are ``views.augment`` and
    ``views.augment_b`` in the presets. Each view goes through each network in its own pass, as
    in the official code, so BatchNorm normalises each view by its own statistics;
    ``views_in_one_pass`` normalises both together (fewer, larger batches; a deviation).
    Evaluated: the online backbone (the student), as the paper; ``eval.network=teacher`` reads
    the target.
    """

    embedding_head = "projector"
    teacher_prefix = "target.backbone"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        proj_hidden_dim: PositiveInt = 4096,
        proj_dim: PositiveInt = 256,
        pred_hidden_dim: PositiveInt = 4096,
        base_momentum: Fraction = 0.996,
        final_momentum: Fraction = 1.0,
        views_in_one_pass: bool = False,
    ) -> None:
        super().__init__(backbone, views)
        if not 0.0 <= base_momentum <= final_momentum <= 1.0:
            raise ValueError(f"need 0 <= base_momentum <= final_momentum <= 1, got {base_momentum}, {final_momentum}")
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.views_in_one_pass = views_in_one_pass
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)
        self.target = Teacher(self.backbone, self.projector)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        pred_a, pred_b = forward_views(lambda x: self.predictor(self.projector(self.backbone(x))), batch.views,
                                       self.views_in_one_pass)
        target_a, target_b = forward_views(self.target, batch.views, self.views_in_one_pass)
        loss = 4 + 2 * (negative_cosine(pred_a, target_b) + negative_cosine(pred_b, target_a))
        return {"loss": loss, "momentum": torch.tensor(self.momentum_at(progress))}

    def momentum_at(self, progress: float) -> float:
        return momentum_schedule(progress, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.target.follow(self.backbone, self.projector, self.momentum_at(progress))
