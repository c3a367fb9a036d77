"""DINO: self-distillation without labels; a student matches a momentum teacher across crops.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294).
"""
from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from ..arguments import Fraction, NonNegative, Positive, PositiveInt, Range
from ..blocks import Teacher, forward_by_resolution, momentum_schedule
from ..engine import Batch, dist
from ..losses import dino_loss
from ..models.heads import DINOHead
from ..views import MultiCropViews
from .base import Method


class DINO(Method):
    """DINO (Caron et al. 2021): multi-crop self-distillation with a centred, sharpened EMA teacher.

    The student sees every crop (2 global + N local, one backbone pass per resolution); the
    teacher, a moving average of the student's backbone and head, sees the 2 global crops
    only. Loss: :func:`selfsup.losses.dino_loss` over all (teacher global, other student crop)
    pairs. After the loss the center moves towards the batch mean of the teacher's logits
    (momentum 0.9, averaged over processes); after the optimiser step the teacher moves
    towards the student (momentum 0.996 -> 1 on a cosine).

    Defaults from the paper and its code: head 3 layers 2048 -> bottleneck 256 -> 65,536
    prototypes with a weight-normalised last layer, frozen for the first epoch
    (``freeze_last_layer`` epochs); student temperature 0.1, teacher temperature 0.04
    (``teacher_temperature_start`` and ``teacher_warmup``, a fraction of training, give the
    linear warm-up of the paper's 0.04 -> 0.07 over its first 30 epochs). Works with a ViT
    (``backbone.name: vit_tiny`` / ``vit_small``, optional registers) or a ResNet. In the presets,
    as in the reference: per-parameter gradient clipping at 3 (``optim.clip_mode: per_parameter``)
    and stochastic depth 0.1 in the student ViT (``backbone.drop_path``; the teacher never drops).

    Evaluated and exported network: the **teacher** (``evaluated_network``), as the paper reports
    and its evaluation code reads it (``--checkpoint_key teacher``); with a ResNet its BatchNorm
    statistics come from global crops only, the student's are half local-crop statistics.
    ``eval.network=student`` evaluates the student instead.
    """

    views_class = MultiCropViews
    teacher_prefix = "teacher.backbone"
    evaluated_network = "teacher"

    def __init__(
        self,
        backbone: nn.Module,
        views: nn.Module,
        *,
        out_dim: PositiveInt = 65536,
        hidden_dim: PositiveInt = 2048,
        bottleneck_dim: PositiveInt = 256,
        norm_last_layer: bool = True,
        student_temperature: Positive = 0.1,
        teacher_temperature: Positive = 0.04,
        teacher_temperature_start: Positive | None = None,
        teacher_warmup: Annotated[float, Range(0, 1, open_high=True)] = 0.0,
        center_momentum: Fraction = 0.9,
        base_momentum: Fraction = 0.996,
        final_momentum: Fraction = 1.0,
        freeze_last_layer: NonNegative = 1.0,
    ) -> None:
        super().__init__(backbone, views)
        if not 0.0 <= teacher_warmup < 1.0:
            raise ValueError(f"teacher_warmup is a fraction of training in [0, 1), got {teacher_warmup}")
        self.head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim,
                             norm_last_layer=norm_last_layer)
        self.teacher = Teacher(self.backbone, self.head)  # without the student's stochastic depth, as the reference
        self.register_buffer("center", torch.zeros(out_dim))
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.teacher_temperature_start = teacher_temperature if teacher_temperature_start is None \
            else teacher_temperature_start
        self.teacher_warmup, self.center_momentum = teacher_warmup, center_momentum
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.freeze_last_layer = freeze_last_layer

    def teacher_temperature_at(self, progress: float) -> float:
        if progress >= self.teacher_warmup:
            return self.teacher_temperature
        share = progress / self.teacher_warmup
        return self.teacher_temperature_start + share * (self.teacher_temperature - self.teacher_temperature_start)

    def frozen_epochs(self) -> dict[str, float]:
        return {"head.last_layer": self.freeze_last_layer} if self.freeze_last_layer > 0 else {}

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        crops = batch.views
        student = forward_by_resolution(lambda x: self.head(self.backbone(x)), crops)
        teacher = list(self.teacher(torch.cat(crops[:2])).chunk(2))
        temperature = self.teacher_temperature_at(progress)
        loss = dino_loss(student, teacher, self.center, self.student_temperature, temperature)
        self.update_center(torch.cat(teacher))
        return {"loss": loss, "teacher_temperature": torch.tensor(temperature)}

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean of the teacher's logits over the global batch."""
        batch_mean = dist.all_reduce_mean(teacher_logits.float().mean(0))
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        momentum = momentum_schedule(progress, self.base_momentum, self.final_momentum)
        self.teacher.follow(self.backbone, self.head, momentum)
