"""MaskFeat: mask patches of the input and regress the HOG features of the masked regions.

Wei, Fan, Xie, Wu, Yuille, Feichtenhofer. "Masked Feature Prediction for Self-Supervised
Visual Pre-Training", CVPR 2022 (arXiv:2112.09133).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import PositiveInt, Range
from ..blocks import patch_targets
from ..engine import Batch
from ..errors import SelfsupError
from ..models.vit import VisionTransformer
from ..views import OneView
from .base import Method


class MaskFeat(Method):
    """MaskFeat (Wei et al. 2022): a ViT sees the image with patches masked; a linear head on each
    masked patch's output token predicts the HOG of that patch; MSE on masked patches only.

    Defaults from the paper: 40% of the patches masked, a learnable mask token replacing their
    embeddings, HOG with 9 orientation bins on 8 px cells for 16 px patches (here: cells of
    half the patch from 8 px patches up, one cell per patch below), each cell's histogram
    L2-normalised, RGB channels concatenated (:func:`selfsup.blocks.hog`), minimal augmentation
    (crop and flip). Deviation: patches are masked uniformly at random, not in BEiT's blocks.
    Needs a ViT backbone (``backbone.name: vit_tiny``). The network evaluated is the backbone; the
    presets read it as the official fine-tuning does, by the mean of its patch tokens
    (``backbone.pool: mean``; SlowFast's ``USE_MEAN_POOLING``): pretraining puts no loss on the [CLS] output.
    """

    views_class = OneView

    def __init__(self, backbone: nn.Module, views: nn.Module, *, mask_ratio: Annotated[float, Range(0, 1, open_low=True, open_high=True)] = 0.4, hog_bins: PositiveInt = 9,
                 hog_cell: PositiveInt | None = None) -> None:
        super().__init__(backbone, views)
        if not isinstance(backbone, VisionTransformer):
            raise SelfsupError(f"MaskFeat masks ViT patches: set backbone.name to vit_tiny or vit_small "
                               f"(got {type(backbone).__name__})")
        if not 0.0 < mask_ratio < 1.0:
            raise SelfsupError(f"method.mask_ratio must lie in (0, 1), got {mask_ratio}")
        patch = backbone.patch_size
        self.hog_cell = hog_cell or (patch // 2 if patch >= 8 else patch)
        if patch % self.hog_cell:
            raise SelfsupError(f"method.hog_cell ({self.hog_cell} px) must divide the patch ({patch} px)")
        self.mask_ratio, self.hog_bins = mask_ratio, hog_bins
        channels = backbone.arch["in_channels"]
        target_dim = channels * (patch // self.hog_cell) ** 2 * hog_bins
        self.mask_token = nn.Parameter(torch.zeros(backbone.num_features))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(backbone.num_features, target_dim)

    def random_mask(self, batch: int, patches: int, device: torch.device) -> torch.Tensor:
        """(batch, patches) bool, exactly round(mask_ratio * patches) True per row, at least one."""
        count = max(1, round(self.mask_ratio * patches))
        order = torch.rand(batch, patches, device=device).argsort(1)
        return order < count

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        (view,) = batch.views
        with torch.no_grad():
            targets = patch_targets(view.float(), self.backbone.patch_size, self.hog_cell, self.hog_bins)
        mask = self.random_mask(len(view), targets.shape[1], view.device)
        tokens = self.backbone.forward_tokens(view, mask=mask, mask_token=self.mask_token)
        patches = tokens[:, 1 + self.backbone.num_registers:]
        prediction = self.head(patches[mask]).float()
        return {"loss": F.mse_loss(prediction, targets[mask]), "masked": mask.float().mean()}
