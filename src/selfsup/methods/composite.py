"""Composite objectives of the multi-view view of self-supervised learning.

Tsai, Wu, Salakhutdinov, Morency. "Self-supervised Learning from a Multi-view Perspective",
ICLR 2021 (arXiv:2006.05576). Two views X and S of an image; Z_X is X's representation.
Contrastive and forward-predictive objectives extract the information the views share (the
task-relevant part), the inverse-predictive objective discards what only one view has:

- L_CL, contrastive: tell the other view's representation from other images'.
- L_FP, forward-predictive: "use Z_X to reconstruct S": a decoder rebuilds the other view's
  pixels from the representation.
- L_IP, inverse-predictive: "use S to reconstruct Z_X": each view's representation predicts the
  other's; with an identity predictor, the mean squared error between the two.

L = w_CL L_CL + w_FP L_FP + w_IP L_IP. The reference code (yaohungt/Self_Supervised_Learning_Multiview,
Omniglot, the one setting with all three terms) weights the predictive terms 0.001 and both act
on the L2-normalised backbone features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import NonNegative, Positive, PositiveInt
from ..engine import Batch
from ..errors import SelfsupError
from ..losses import negative_cosine, nt_xent
from ..models.heads import mlp
from ..views import TwoViewsAndTransform
from .base import Method

TRANSFORM_DIM = 5
"""Centre shift (x, y), log size ratio (w, h), mirrored: :func:`selfsup.views.relative_transform`."""


class ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` on its way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad * ctx.scale, None


class PixelDecoder(nn.Module):
    """(B, D) representation -> (B, C, H, W) image: a linear layer to a 64-channel map of a quarter
    of the side, then two stride-2 transposed convolutions (as the reference's deconvolutional
    Omniglot decoder), cropped to the side."""

    def __init__(self, in_dim: int, channels: int, size: int) -> None:
        super().__init__()
        self.size, self.grid = size, math.ceil(size / 4)
        self.project = nn.Linear(in_dim, 64 * self.grid * self.grid)
        self.upsample = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.ConvTranspose2d(32, channels, 4, 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grid = self.project(z).view(len(z), 64, self.grid, self.grid)
        return self.upsample(grid)[..., :self.size, :self.size]


class Composite(Method):
    """Composite multi-view objective (Tsai et al. 2021): contrastive + forward- + inverse-predictive.

    The paper's terms, on z = L2-normalised backbone features of the two views (as the reference):

    - contrastive (``contrastive_weight``, 1): NT-Xent between the views' projections (SimCLR).
    - forward-predictive (``forward_weight``, 0.001): a :class:`PixelDecoder` reconstructs each
      view's pixels (as normalised for the network) from the other view's z; mean squared error,
      the two directions summed as in the reference. The weight scales what reaches the encoder;
      the decoder itself learns from the unweighted error, as in the reference, which trains it
      with an optimiser of its own (Adam, whose steps ignore the 0.001).
    - inverse-predictive (``inverse_weight``, 0.001): mse(z_a, z_b) + mse(z_b, z_a), gradient
      through both views: the representations predict each other, which leaves out what only one
      view holds (its crop, its colours).

    Named options that are **not** Tsai et al.'s:

    - ``forward_target="latent"``: the forward term predicts the other view's projection with an
      MLP (2 - 2 cos against a stop-gradient target, BYOL's form) instead of its pixels.
    - ``transform_weight`` (0: off): a head on both views' features regresses the crop and flip
      relating them (centre shift, log size ratio, mirroring; Huber loss). That is transform
      prediction (equivariance): it makes the backbone *keep* view-specific information, the
      opposite of the inverse-predictive term. selfsup's earlier "inverse" term was this.

    Each term works alone (set the others to 0; heads no term uses are not built). The logged
    ``contrastive``, ``forward``, ``inverse`` and ``transform`` entries are the unweighted terms.
    Other defaults: projection 2048 -> 128, temperature 0.5 (the reference's CIFAR-10 setting,
    SimCLR's). Evaluated network: the backbone.
    """

    views_class = TwoViewsAndTransform
    embedding_head = "projector"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        contrastive_weight: NonNegative = 1.0,
        forward_weight: NonNegative = 0.001,
        inverse_weight: NonNegative = 0.001,
        transform_weight: NonNegative = 0.0,
        forward_target: str = "pixels",
        proj_hidden_dim: PositiveInt = 2048,
        proj_dim: PositiveInt = 128,
        temperature: Positive = 0.5,
    ) -> None:
        super().__init__(backbone, views)
        weights = {"contrastive": contrastive_weight, "forward": forward_weight, "inverse": inverse_weight,
                   "transform": transform_weight}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise SelfsupError(f"composite weights must be >= 0 with at least one > 0, got {weights}")
        if forward_target not in ("pixels", "latent"):
            raise SelfsupError(f"forward_target is pixels (Tsai et al.) or latent, got '{forward_target}'")
        self.weights, self.temperature, self.forward_target = weights, temperature, forward_target
        latent_forward = forward_weight and forward_target == "latent"
        if contrastive_weight or latent_forward:
            self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        if forward_weight:
            image = views.image
            self.forward_predictor = mlp(proj_dim, proj_hidden_dim, proj_dim) if latent_forward else \
                PixelDecoder(backbone.num_features, image.channels, image.size)
        if transform_weight:
            self.transform_predictor = mlp(2 * backbone.num_features, proj_hidden_dim, TRANSFORM_DIM)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        view_a, view_b, transform = batch.views
        features = self.backbone(torch.cat([view_a, view_b]))
        z_a, z_b = F.normalize(features.float(), dim=1).chunk(2)
        if hasattr(self, "projector"):
            proj_a, proj_b = self.projector(features).chunk(2)
        terms: dict[str, torch.Tensor] = {}
        if self.weights["contrastive"]:
            terms["contrastive"] = nt_xent(proj_a, proj_b, self.temperature)
        if self.weights["forward"]:
            if self.forward_target == "pixels":
                z = ScaleGradient.apply(torch.cat([z_a, z_b]), self.weights["forward"])
                rebuilt_b, rebuilt_a = self.forward_predictor(z).float().chunk(2)
                terms["forward"] = F.mse_loss(rebuilt_b, view_b.float()) + F.mse_loss(rebuilt_a, view_a.float())
            else:
                pred_a, pred_b = self.forward_predictor(torch.cat([proj_a, proj_b])).chunk(2)
                terms["forward"] = 2 + negative_cosine(pred_a, proj_b) + negative_cosine(pred_b, proj_a)
        if self.weights["inverse"]:
            terms["inverse"] = F.mse_loss(z_a, z_b) + F.mse_loss(z_b, z_a)
        if self.weights["transform"]:
            feat_a, feat_b = features.chunk(2)
            # Huber, not MSE: an unbounded regression at the contrastive recipe's rate diverged (inf at step 11).
            terms["transform"] = F.smooth_l1_loss(self.transform_predictor(torch.cat([feat_a, feat_b], 1)).float(),
                                                  transform.float())
        loss = sum(self.weights[name] * term for name, term in terms.items())
        if self.weights["forward"] and self.forward_target == "pixels":
            # Value: the weighted sum; gradient: the whole error to the decoder, its weight to z (above).
            forward_term = terms["forward"]
            loss = loss + (1 - self.weights["forward"]) * (forward_term - forward_term.detach())
        return {"loss": loss, **{name: term.detach() for name, term in terms.items()}}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "projector"):
            raise SelfsupError("this composite objective has no projection head (no contrastive or latent forward "
                               "term); use eval.features=backbone")
        return super().embed(x)
