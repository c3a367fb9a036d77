"""SimSiam: BYOL without the moving average; the stop-gradient alone prevents collapse.

Chen, He. "Exploring Simple Siamese Representation Learning", CVPR 2021 (arXiv:2011.10566).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import PositiveInt
from ..blocks import forward_views
from ..engine import Batch
from ..losses import negative_cosine
from ..models.heads import mlp
from .base import Method


class SimSiam(Method):
    """SimSiam (Chen & He 2021): predict one view's projection from the other's, stop-gradient on the target.

    loss = D(p_a, stopgrad(z_b)) / 2 + D(p_b, stopgrad(z_a)) / 2 with D = -cos (eq. 2): -1 at
    best. ``output_std`` (logged) is the per-dimension std of the normalised projections, the
    paper's collapse monitor: 1/sqrt(dim) when healthy, 0 when collapsed.

    Defaults from the paper: projector of 3 layers 2048 -> 2048 with BN after every layer
    (the output's too), predictor a 2-layer bottleneck 2048 -> 512 -> 2048 with BN in the hidden
    layer. (The CIFAR variant of the paper uses a 2-layer projector: ``proj_layers``.) The
    predictor trains at the peak rate throughout, without warm-up or decay (Sec. 4.2: slightly
    better, "the predictor should adapt to the latest representations"); ``fix_predictor_lr``.
    Each view goes through the network in its own pass, as in the official code, so BatchNorm
    normalises each view by its own statistics; ``views_in_one_pass`` normalises both together
    (fewer, larger batches; a deviation). Evaluated: the backbone.
    """

    embedding_head = "projector"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        proj_dim: PositiveInt = 2048,
        proj_layers: PositiveInt = 3,
        pred_hidden_dim: PositiveInt = 512,
        fix_predictor_lr: bool = True,
        views_in_one_pass: bool = False,
    ) -> None:
        super().__init__(backbone, views)
        self.fix_predictor_lr, self.views_in_one_pass = fix_predictor_lr, views_in_one_pass
        self.projector = mlp(backbone.num_features, proj_dim, proj_dim, proj_layers, last_batch_norm=True)
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)

    def param_groups(self) -> list[dict]:
        return [{"name": "backbone", "params": list(self.backbone.parameters())},
                {"name": "projector", "params": list(self.projector.parameters())},
                {"name": "predictor", "params": list(self.predictor.parameters()), "fixed_lr": self.fix_predictor_lr}]

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        proj_a, proj_b = forward_views(lambda x: self.projector(self.backbone(x)), batch.views, self.views_in_one_pass)
        pred_a, pred_b = forward_views(self.predictor, [proj_a, proj_b], self.views_in_one_pass)
        loss = (negative_cosine(pred_a, proj_b) + negative_cosine(pred_b, proj_a)) / 2
        output_std = F.normalize(proj_a.detach().float(), dim=1).std(0).mean()
        return {"loss": loss, "output_std": output_std}
