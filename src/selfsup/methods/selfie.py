"""Selfie: which of the masked patches belongs at this location?

Trinh, Luong, Le. "Selfie: Self-supervised Pretraining for Image Embedding", 2019
(arXiv:1906.02940).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Positive, PositiveInt, Range
from ..engine import Batch
from ..errors import SelfsupError
from ..losses import candidate_nce
from ..models import StagedBackbone
from ..models.heads import AttentionPooling, AttentionPoolTrunk, freeze_after
from ..views import OneView, grid_patches
from .base import Method


class PatchPositions(nn.Module):
    """A learned embedding per grid location (the paper's 4x4 grid on 32 px images), or the sum
    of a row and a column embedding (its 7x7 grid on 224 px images: 7 + 7 vectors, not 49)."""

    def __init__(self, grid: int, dim: int, row_column: bool) -> None:
        super().__init__()
        self.grid, self.row_column = grid, row_column
        tables = (grid, grid) if row_column else (grid * grid,)
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(size, dim) * 0.02) for size in tables)

    def forward(self, locations: torch.Tensor) -> torch.Tensor:
        """(...) row-major grid indices -> (..., dim)."""
        if self.row_column:
            return self.tables[0][locations // self.grid] + self.tables[1][locations % self.grid]
        return self.tables[0][locations]


class Selfie(Method):
    """Selfie (Trinh et al. 2019): BERT's masked-token prediction for images, as a choice among
    the masked patches.

    The image is cut into a grid of ``patch_size`` patches; a fraction ``visible`` goes to the
    encoder: the patch network P (the backbone's stages up to ``patch_stage``, spatially
    average-pooled) gives h_i per patch, :class:`~selfsup.models.heads.AttentionPooling` pools
    [u0, h_1..h_n] into u. The masked patches go through the same P (in their own pass, so not
    even BatchNorm statistics carry them into u) to give the candidates. For every masked
    location the query u + position embedding is compared by dot product with all masked
    patches of the same image (the hard distractors) and cross-entropy asks for the right one;
    all masked locations at once (:func:`~selfsup.losses.candidate_nce`).

    Defaults from the paper: P = the first three stages of the ResNet (``res4``: "ResNet-36");
    the last stage is not trained here (fine-tuning starts it fresh: ``selfsup eval finetune
    --layer-modes res5=retrain``, or ``--head-layers 1`` for ResNet-36 + attention pooling);
    a 4x4 grid (8 px patches on 32 px, 7 px on 28 px); 75% of the patches visible (the paper
    tunes 75% vs 50%); 3 attention blocks, 32 dims per head, intermediate size 0.625 x, dropout
    0.1; one embedding per location up to 16 locations, row + column embeddings above.

    Deviations: the dot products are divided by sqrt(dim) (``scaled_logits``), as attention's
    are: unscaled, the first losses were ~10 for a 4-way choice and u collapsed to a constant
    (benchmarks/RESULTS.md, section 12). ``query=pool`` is an option beyond the paper (see
    :meth:`queries`). The paper's position jitter is a 4 px zero-pad and random crop; here the
    views' random resized crop. The method's embedding (``eval.features=embedding``) is P on
    the whole image, pooled: the trained part of the network, evaluated after its BatchNorm
    statistics are re-estimated on whole images (it trained on patches only).
    """

    views_class = OneView
    trains_on_tiles = True
    """P sees only patches (7 px on 28 px images): its BatchNorm statistics are patch statistics, so
    evaluation on whole images re-estimates them first, as for Jigsaw (``eval.bn_recalibration``)."""

    def __init__(self, backbone: nn.Module, views: nn.Module, *, patch_size: PositiveInt | None = None,
                 visible: Annotated[float, Range(0, 1, open_low=True, open_high=True)] = 0.75, patch_stage: str = "res4", attention_blocks: PositiveInt = 3, head_dim: PositiveInt = 32,
                 ffn_ratio: Positive = 0.625, dropout: Annotated[float, Range(0, 1, open_high=True)] = 0.1, position_embedding: str = "auto",
                 query: str = "add", scaled_logits: bool = True) -> None:
        super().__init__(backbone, views)
        if not isinstance(backbone, StagedBackbone):
            raise SelfsupError(f"Selfie's patch network is the first stages of a ResNet: set backbone.name to "
                               f"resnet18/34/50 (got {type(backbone).__name__})")
        if patch_stage not in backbone.stage_prefixes():
            raise SelfsupError(f"method.patch_stage must be one of {', '.join(backbone.stage_prefixes())}, "
                               f"got '{patch_stage}'")
        size = views.augment.size
        self.patch_size = patch_size or size // 4
        if self.patch_size < 1 or size % self.patch_size:
            raise SelfsupError(f"method.patch_size ({self.patch_size} px) must divide the {size} px images into a "
                               "grid (the paper: 8 px on 32 px images, 32 px on 224 px)")
        self.grid = size // self.patch_size
        locations = self.grid ** 2
        self.visible_count = round(visible * locations)
        if not 0 < self.visible_count < locations - 1:
            raise SelfsupError(f"method.visible={visible} of {locations} patches leaves {self.visible_count} visible "
                               f"and {locations - self.visible_count} masked; need at least one visible and two masked")
        if position_embedding not in ("auto", "location", "row_column"):
            raise SelfsupError(f"method.position_embedding must be auto, location or row_column, "
                               f"got '{position_embedding}'")
        if query not in ("add", "pool"):
            raise SelfsupError(f"method.query must be add (the paper's u + position) or pool, got '{query}'")
        self.patch_stage, self.query, self.scaled_logits = patch_stage, query, scaled_logits
        freeze_after(backbone, patch_stage)  # the later stages are not P: never trained here
        dim = self.feature_dim(backbone.arch["in_channels"])
        self.pooling = AttentionPooling(dim, attention_blocks, head_dim, ffn_ratio, dropout)
        row_column = position_embedding == "row_column" or (position_embedding == "auto" and locations > 16)
        self.positions = PatchPositions(self.grid, dim, row_column)

    @torch.no_grad()
    def feature_dim(self, channels: int) -> int:
        """The width of P's output, from one patch in eval mode (no BatchNorm statistics change)."""
        training = self.backbone.training
        self.backbone.eval()
        dim = self.patch_features(torch.zeros(1, channels, self.patch_size, self.patch_size)).shape[1]
        self.backbone.train(training)
        return dim

    def patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """P: (N, C, p, p) patches (or whole images) -> (N, dim), the stages up to ``patch_stage`` pooled."""
        return self.backbone.forward_stages(patches, until=self.patch_stage)[self.patch_stage].mean((2, 3))

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """The encoder: (B, n, C, p, p) visible patches -> u (B, dim)."""
        return self.pooling(self.visible_features(patches))

    def visible_features(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, n, C, p, p) -> (B, n, dim): P on every patch."""
        return self.patch_features(patches.flatten(0, 1)).view(*patches.shape[:2], -1)

    def queries(self, patches: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """(B, n, C, p, p) visible patches, (B, M) masked locations -> (B, M, dim) one query per location.

        ``add`` (the paper): u + position embedding. Then u . h_k is the same for every query of
        an image, a bias per candidate that cannot tell locations apart; only the position term
        ranks them. ``pool``: the position embedding is added to u0 and the pooling runs once per
        location, so what the visible patches say reaches each query in its own way.
        """
        positions = self.positions(masked)                                      # (B, M, dim)
        if self.query == "add":
            return self.encode(patches)[:, None] + positions
        features = self.visible_features(patches)
        count = masked.shape[1]
        tokens = features[:, None].expand(-1, count, -1, -1).flatten(0, 1)      # (B * M, n, dim)
        return self.pooling(tokens, positions.flatten(0, 1)).view(*masked.shape, -1)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        (view,) = batch.views
        patches = grid_patches(view, self.patch_size)                           # (B, N, C, p, p) row-major
        order = torch.rand(patches.shape[:2], device=view.device).argsort(1)
        visible, masked = order[:, :self.visible_count], order[:, self.visible_count:]
        queries = self.queries(gather_patches(patches, visible), masked)        # (B, M, dim)
        candidates = self.patch_features(gather_patches(patches, masked).flatten(0, 1)).view(*masked.shape, -1)
        targets = torch.arange(masked.shape[1], device=view.device).expand_as(masked)
        if self.scaled_logits:
            queries = queries * queries.shape[-1] ** -0.5
        loss, accuracy = candidate_nce(queries, candidates, targets)
        return {"loss": loss, "accuracy": accuracy}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.patch_features(x).float(), dim=1)

    def fine_tune_trunk(self, head_layers: int) -> nn.Module:
        """``head_layers=1``: P on the whole image with the attention pooling on top (the paper's
        ResNet-36 + attention pooling), instead of the full ResNet."""
        if head_layers != 1:
            raise SelfsupError("selfie: --head-layers 1 fine-tunes P + attention pooling (ResNet-36 + attention "
                               f"pooling); there is no other head to keep (got {head_layers})")
        return AttentionPoolTrunk(self.backbone, self.pooling, self.patch_stage)


def gather_patches(patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, C, p, p) patches, (B, K) indices -> (B, K, C, p, p) the chosen patches of each image."""
    return patches[torch.arange(len(patches), device=patches.device)[:, None], index]
