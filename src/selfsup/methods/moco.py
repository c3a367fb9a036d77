"""MoCo: contrast each query with its key from a slowly moving encoder and a queue of old keys.

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722); v2: Chen, Fan, Girshick, He. "Improved Baselines
with Momentum Contrastive Learning", 2020 (arXiv:2003.04297).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import Fraction, Positive, PositiveInt
from ..blocks import FeatureQueue, Teacher, shuffled_forward, split_batch_norm
from ..engine import Batch
from ..losses import info_nce
from ..models.heads import mlp
from .base import Method


class MoCo(Method):
    """MoCo v1/v2 (He et al. 2020; Chen et al. 2020): InfoNCE against a momentum key encoder's queue.

    view a -> backbone -> head -> query q; view b -> key encoder (a moving average of backbone
    and head, shuffle-BN across processes) -> key k; loss InfoNCE(q, k, queue), then k is
    enqueued (gathered from every process) and the oldest keys leave the queue.

    Defaults from the papers: v2 (``version=2``): a 2-layer MLP head 2048 -> 128 without BN,
    temperature 0.2; v1: a linear 128-d head, temperature 0.07 (``version=1`` sets both unless
    given). Queue of 65,536 keys, key-encoder momentum m = 0.999, updated after every optimiser
    step. The blur and the cosine schedule of v2 live in the presets (``views.augment.blur_p``,
    the engine's cosine schedule). ``symmetric`` adds the loss with the views swapped, summed as
    in MoCo's CIFAR-10 demo (loss_12 + loss_21; MoCo v3 and many CIFAR recipes; the papers use one
    direction).

    One process: shuffle-BN has no other process to shuffle with, so queries and keys would be
    normalised with statistics of the same images. As MoCo's one-GPU CIFAR-10 demo, every
    BatchNorm of both encoders then normalises ``bn_splits`` (8) groups of the batch separately
    and the keys' batch is shuffled within the batch first (:mod:`selfsup.blocks.split_bn`);
    under DDP, shuffle-BN across processes is used instead. ``bn_splits=1`` turns it off.
    Evaluated network: the query encoder (the backbone), as the papers.
    """

    teacher_prefix = "key_encoder.backbone"

    embedding_head = "projector"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        version: int = 2,
        proj_hidden_dim: PositiveInt = 2048,
        proj_dim: PositiveInt = 128,
        temperature: Positive | None = None,
        queue_size: PositiveInt = 65536,
        momentum: Fraction = 0.999,
        symmetric: bool = False,
        bn_splits: PositiveInt = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, views)
        if version not in (1, 2):
            raise ValueError(f"MoCo version must be 1 or 2, got {version}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
        self.version, self.symmetric, self.momentum, self.bn_splits = version, symmetric, momentum, bn_splits
        if bn_splits > 1:  # before the key encoder copies the backbone: both split
            split_batch_norm(self.backbone, bn_splits)
        self.temperature = temperature if temperature is not None else (0.2 if version == 2 else 0.07)
        if version == 1:
            self.projector: nn.Module = nn.Linear(backbone.num_features, proj_dim)
        else:
            self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim, 2, batch_norm=False)
        self.key_encoder = Teacher(self.backbone, self.projector)
        self.queue = FeatureQueue(queue_size, proj_dim, seed=seed)

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        view_a, view_b = batch.views
        pairs = [(view_a, view_b), (view_b, view_a)] if self.symmetric else [(view_a, view_b)]
        # Queries of both directions in one pass, so BatchNorm sees one batch.
        queries = self.projector(self.backbone(torch.cat([q for q, _ in pairs]))).chunk(len(pairs))
        keys = [F.normalize(shuffled_forward(self.key_encoder, k, within_batch=self.bn_splits > 1).float(), dim=1)
                for _, k in pairs]
        negatives = self.queue.keys.clone()  # the enqueue below writes in place; backward needs these
        loss = sum(info_nce(q, k, negatives, self.temperature) for q, k in zip(queries, keys))
        for key in keys:  # after the loss: a batch's own keys are never its negatives
            self.queue.enqueue(key)
        return {"loss": loss}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.key_encoder.follow(self.backbone, self.projector, self.momentum)
