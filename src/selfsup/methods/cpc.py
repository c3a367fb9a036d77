"""CPC v2: predict the embeddings of the patches further down the image from the rows above.

van den Oord, Li, Vinyals. "Representation Learning with Contrastive Predictive Coding", 2018
(arXiv:1807.03748); Henaff et al. "Data-Efficient Image Recognition with Contrastive Predictive
Coding", ICML 2020 (arXiv:1905.09272).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Count, Positive, PositiveInt
from ..engine import Batch
from ..errors import SelfsupError
from ..losses import candidate_nce
from ..views import OneView, grid_patches
from .base import Method


class RowContext(nn.Module):
    """The autoregressive context network: residual blocks of convolutions masked so that the
    context at row i sees the patch embeddings of rows <= i only (PixelCNN's masking, by rows).

    A masked kernel is a kernel padded above: each convolution sees ``kernel`` rows, the output's
    own and those above it, and ``kernel`` columns around it.
    """

    def __init__(self, dim: int, blocks: int = 2, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(dim, dim // 2, 1), nn.Conv2d(dim // 2, dim // 2, kernel), nn.Conv2d(dim // 2, dim, 1)])
            for _ in range(blocks))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim, G, G) patch embeddings -> (B, dim, G, G) contexts."""
        c = z
        for reduce, masked, expand in self.blocks:
            h = F.relu(reduce(F.relu(c)))
            h = masked(F.pad(h, (self.kernel // 2, self.kernel // 2, self.kernel - 1, 0)))   # rows above only
            c = c + expand(F.relu(h))
        return c


class CPC(Method):
    """CPC v2 (Henaff et al. 2020): each patch of an overlapping grid is encoded alone by the
    backbone (with layer norm, ``backbone.norm=layer``: batch statistics would let patches see
    each other); a masked-convolution context network (:class:`RowContext`) summarises the rows
    above; from the context at row i, one linear prediction per offset k says what the patch k
    rows below in the same column looks like; InfoNCE picks it among the other patches
    (:func:`~selfsup.losses.candidate_nce`).

    Defaults: patches of a quarter of the image, half-overlapping (the paper: 64 px every 32 px
    on 256 px crops, a 7x7 grid; here 7 px every 3 px on 28 px, 8x8); as the v2 reference code,
    the two nearest offsets (which overlap or touch the context's patches) are skipped and the
    next three predicted (``skip_steps=2``, ``prediction_steps=3``), predictions and targets are
    projected to 64 dims, their dot products scaled by 0.1. Negatives: the patches of the image's group of
    ``negative_images`` images in the batch (the paper: the whole batch; grouped to bound the
    logits' memory on small machines). Deviation: the v2 paper's augmentation is drawn per
    patch; here per image (the views' crop, flip, colour jitter). The method's embedding
    (``eval.features=embedding``) is the patch embeddings averaged over the grid, CPC's
    linear-evaluation features.
    """

    views_class = OneView

    def __init__(self, backbone: nn.Module, views: nn.Module, *, patch_size: PositiveInt | None = None,
                 patch_stride: PositiveInt | None = None, skip_steps: Count = 2, prediction_steps: PositiveInt = 3,
                 context_blocks: PositiveInt = 2, target_dim: PositiveInt = 64, logit_scale: Positive = 0.1,
                 negative_images: PositiveInt = 32) -> None:
        super().__init__(backbone, views)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
            raise SelfsupError("CPC v2 encodes every patch on its own: set backbone.norm=layer (batch norm would "
                               "let the patches of an image see each other's statistics)")
        size = views.augment.size
        self.patch_size = patch_size or size // 4
        self.stride = patch_stride or max(1, self.patch_size // 2)
        self.grid = (size - self.patch_size) // self.stride + 1 if self.patch_size <= size else 0
        if skip_steps < 0 or prediction_steps < 1:
            raise SelfsupError(f"method.skip_steps must be >= 0 and prediction_steps >= 1, got {skip_steps} and "
                               f"{prediction_steps}")
        if self.grid - skip_steps - prediction_steps < 1:
            raise SelfsupError(f"a {self.grid}x{self.grid} grid ({self.patch_size} px patches every {self.stride} px "
                               f"on {size} px images) has no row to predict {skip_steps} + {prediction_steps} rows "
                               "below of; use smaller patches or fewer steps")
        if negative_images < 1:
            raise SelfsupError(f"method.negative_images must be positive, got {negative_images}")
        self.offsets = list(range(skip_steps + 1, skip_steps + prediction_steps + 1))
        self.negative_images, self.logit_scale = negative_images, logit_scale
        dim = backbone.num_features
        self.context = RowContext(dim, context_blocks)
        self.to_target = nn.Linear(dim, target_dim)
        self.predictors = nn.ModuleList(nn.Linear(dim, target_dim) for _ in self.offsets)

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, dim, G, G): the backbone on every patch of the grid."""
        patches = grid_patches(x, self.patch_size, self.stride)
        z = self.backbone(patches.flatten(0, 1)).view(len(x), self.grid, self.grid, -1)
        return z.permute(0, 3, 1, 2)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        (view,) = batch.views
        z = self.patch_embeddings(view)                                          # (B, dim, G, G)
        context = self.context(z).permute(0, 2, 3, 1)                           # (B, G, G, dim)
        targets = self.to_target(z.permute(0, 2, 3, 1))                        # (B, G, G, target_dim)
        images, grid = len(view), self.grid
        groups = -(-images // self.negative_images)
        per_group = images // groups  # equal groups; the remainder of the batch only serves as context
        used = groups * per_group
        queries, answers = [], []
        index = torch.arange(per_group * grid * grid, device=view.device).view(per_group, grid, grid)  # in a group
        for offset, predictor in zip(self.offsets, self.predictors):
            prediction = predictor(context[:used, :grid - offset]) * self.logit_scale   # rows 0 .. G-1-k
            queries.append(prediction.reshape(groups, -1, prediction.shape[-1]))
            answers.append(index[:, offset:].reshape(1, -1).expand(groups, -1))   # the patch k rows below
        candidates = targets[:used].reshape(groups, per_group * grid * grid, -1)
        loss, accuracy = candidate_nce(torch.cat(queries, 1), candidates, torch.cat(answers, 1))
        return {"loss": loss, "accuracy": accuracy}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.patch_embeddings(x).mean((2, 3)).float(), dim=1)
