"""SimCLR: contrast two augmented views of every image against the rest of the batch.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709); v2 head: Chen et al. "Big Self-Supervised
Models are Strong Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import Positive, PositiveInt
from ..engine import Batch
from ..losses import nt_xent
from ..models.heads import mlp
from .base import Method


class SimCLR(Method):
    """SimCLR (Chen et al. 2020): two views of each image, NT-Xent against the rest of the batch.

    views -> backbone -> projection MLP -> NT-Xent over the 2N - 2 negatives of the global batch.

    Defaults from the papers: projection 2048 -> 128 with BN (v1: 2 layers, v2: 3 layers,
    ``proj_layers``), temperature 0.5 (the CIFAR-10 setting of v1, App. B.9; 0.1 for ImageNet
    at batch 4096). Augmentations: :class:`selfsup.views.TwoViews` (crop, flip, colour jitter
    0.8 x strength 0.5, grayscale 0.2). The evaluation uses the backbone's features, before
    the head (Sec. 4.2: the representation before the projection is better).
    Deviations from the official code: hidden width ``proj_hidden_dim`` (official: the feature
    dimension), no BN on the output layer, and the loss at the paper's 1/(2N) normalisation
    (the TF code's is twice that, which halves the effective SGD rate in comparison).
    """

    embedding_head = "projector"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        proj_hidden_dim: PositiveInt = 2048,
        proj_dim: PositiveInt = 128,
        proj_layers: PositiveInt = 2,
        temperature: Positive = 0.5,
    ) -> None:
        super().__init__(backbone, views)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim, proj_layers)
        self.temperature = temperature

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        view_a, view_b = batch.views
        # One pass over both views: BN sees the whole 2B batch, and it is faster.
        proj = self.projector(self.backbone(torch.cat([view_a, view_b])))
        proj_a, proj_b = proj.chunk(2)
        return {"loss": nt_xent(proj_a, proj_b, self.temperature)}
