"""NPID: instance discrimination with a non-parametric softmax over a memory bank.

Wu, Xiong, Yu, Lin. "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018 (arXiv:1805.01978).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Fraction, NonNegative, Positive, PositiveInt
from ..blocks import MemoryBank
from ..engine import Batch
from ..views import OneView
from .base import Method


class NPID(Method):
    """NPID (Wu et al. 2018): every image is its own class, scored against a memory bank.

    backbone -> linear -> L2-normalised 128-d v_i; P(i | v) = exp(v . m_i / tau) / Z,
    learnt by NCE with ``num_negatives`` noise samples from the bank (paper: 4096,
    tau = 0.07, bank momentum 0.5). ``proximal`` > 0 adds the proximal regulariser of
    Sec. 3.4, proximal * ||v_i - m_i||^2 (m_i: the image's feature from the last epoch),
    which smooths training when each class is seen once per epoch.
    Augmentations (Sec. 4): random resized crop, colour jitter, grayscale, flip.

    Evaluation: the paper's classifier is the weighted kNN (k = 200) on the 128-d embedding
    (memory features of the training images, v of the test images). ``selfsup eval knn`` uses
    the pooled backbone features by default (comparable across methods); ``--features
    embedding`` runs it on this method's embedding, ``embed``, for both sets, as lemniscate's
    evaluation with recomputed memory does.
    """

    views_class = OneView

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int, seed: int = 0,
                 feature_dim: PositiveInt = 128, num_negatives: PositiveInt = 4096, temperature: Positive = 0.07,
                 bank_momentum: Fraction = 0.5, normalizer: Literal["fixed", "batch"] = "batch", proximal: NonNegative = 0.0) -> None:
        super().__init__(backbone, views)
        self.projector = nn.Linear(backbone.num_features, feature_dim)
        self.memory = MemoryBank(num_images, feature_dim, momentum=bank_momentum, num_negatives=num_negatives,
                                 temperature=temperature, normalizer=normalizer, seed=seed)
        self.proximal = proximal

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the L2-normalised 128-d v the memory bank holds."""
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        features, index = self.embed(batch.views[0]), batch.index
        loss = self.memory.nce(features, index, self.memory.sample_negatives())
        if self.proximal > 0:
            loss = loss + self.proximal * (features - self.memory.bank[index]).square().sum(1).mean()
        if self.training:
            self.memory.update(index, features)
        return {"loss": loss}
