"""A student classifier trained on a frozen teacher's predictions (Hinton et al. 2015; SimCLR v2's
third stage, Chen et al. 2020b, Sec. 2). Fitted by :func:`selfsup.recipes.distill`."""
from __future__ import annotations

import torch
from torch import nn

from ..engine import Batch
from ..errors import SelfsupError
from ..losses import distillation
from .classifier import Classifier


class Distiller(Classifier):
    """A student classifier trained on a frozen teacher's softened predictions of the same view.

    Defaults from SimCLR v2: temperature 1 and no label term (``teacher_weight=1``), so no label
    is needed. The teacher is never trained: no gradient, not in the parameter groups, always in
    evaluation mode (its BatchNorm statistics stay those it was fine-tuned with).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, views: nn.Module, teacher: Classifier, *,
                 temperature: float = 1.0, teacher_weight: float = 1.0) -> None:
        super().__init__(encoder, num_classes, views)
        if temperature <= 0:
            raise SelfsupError(f"the distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= teacher_weight <= 1.0:
            raise SelfsupError(f"the teacher's weight must be in [0, 1], got {teacher_weight}")
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature, self.teacher_weight = temperature, teacher_weight

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        view = batch.views[0]
        with torch.no_grad():
            teacher_logits = self.teacher.classify(view).float()
        logits = self.classify(view).float()
        loss = distillation(logits, teacher_logits, self.temperature, batch.targets, self.teacher_weight)
        agreement = (logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return {"loss": loss, "teacher_agreement": agreement}
