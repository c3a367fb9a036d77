"""Composite objectives of the multi-view view of self-supervised learning.

Tsai, Wu, Salakhutdinov, Morency. "Self-supervised Learning from a Multi-view Perspective",
ICLR 2021 (arXiv:2006.05576): contrastive and forward-predictive objectives extract the
information two views share (task-relevant), an inverse-predictive objective discards what
the self-supervised signal does not need; L = w_CL L_CL + w_FP L_FP + w_IP L_IP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Batch
from ..errors import SelfsupError
from ..losses import negative_cosine, nt_xent
from ..models.heads import mlp
from ..views import TwoViewsAndTransform
from .base import Method

TRANSFORM_DIM = 5
"""Centre shift (x, y), log size ratio (w, h), mirrored: :func:`selfsup.views.relative_transform`."""


class Composite(Method):
    """Composite multi-view objective (Tsai et al. 2021): weighted contrastive, forward- and inverse-predictive terms.

    - contrastive (``contrastive_weight``): NT-Xent between the two views' projections (SimCLR).
    - forward-predictive (``forward_weight``): a predictor maps one view's projection to the
      other's, 2 - 2 cos against the stop-gradient target, both directions averaged.
    - inverse-predictive (``inverse_weight``): a head on both views' backbone features predicts
      the transform relating them (crop centre shift, log size ratio, mirroring; Huber loss,
      whose bounded gradient keeps the regression stable at the contrastive recipe's rate).

    Each term works alone (set the other weights to 0; heads no term uses are not built). The
    logged ``contrastive``, ``forward`` and ``inverse`` entries are the unweighted terms.
    Defaults: all weights 1, projection 2048 -> 128, temperature 0.5 (SimCLR's CIFAR setting).
    """

    views_class = TwoViewsAndTransform
    embedding_head = "projector"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        contrastive_weight: float = 1.0,
        forward_weight: float = 1.0,
        inverse_weight: float = 1.0,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.5,
        shared: bool = False,
    ) -> None:
        super().__init__(backbone, views, shared=shared)
        weights = {"contrastive": contrastive_weight, "forward": forward_weight, "inverse": inverse_weight}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise SelfsupError(f"composite weights must be >= 0 with at least one > 0, got {weights}")
        self.weights, self.temperature = weights, temperature
        if contrastive_weight or forward_weight:
            self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        if forward_weight:
            self.forward_predictor = mlp(proj_dim, proj_hidden_dim, proj_dim)
        if inverse_weight:
            self.inverse_predictor = mlp(2 * backbone.num_features, proj_hidden_dim, TRANSFORM_DIM)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        view_a, view_b, transform = batch.views
        features = self.backbone(torch.cat([view_a, view_b]))
        if hasattr(self, "projector"):
            proj_a, proj_b = self.projector(features).chunk(2)
        terms: dict[str, torch.Tensor] = {}
        if self.weights["contrastive"]:
            terms["contrastive"] = nt_xent(proj_a, proj_b, self.temperature)
        if self.weights["forward"]:
            pred_a, pred_b = self.forward_predictor(torch.cat([proj_a, proj_b])).chunk(2)
            terms["forward"] = 2 + negative_cosine(pred_a, proj_b) + negative_cosine(pred_b, proj_a)
        if self.weights["inverse"]:
            feat_a, feat_b = features.chunk(2)
            # Huber, not MSE: an unbounded regression at the contrastive recipe's rate diverged (inf at step 11).
            terms["inverse"] = F.smooth_l1_loss(self.inverse_predictor(torch.cat([feat_a, feat_b], 1)).float(),
                                                transform.float())
        loss = sum(self.weights[name] * term for name, term in terms.items())
        return {"loss": loss, **{name: term.detach() for name, term in terms.items()}}
