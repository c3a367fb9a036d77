"""Mean Teacher (Tarvainen & Valpola 2017, "Mean teachers are better role models").

The teacher is the exponential moving average of the student's weights (``ema`` 0.99, the
paper's value for the ramp-up phase; it moves to 0.999 on long schedules) and is never trained
by gradient. As the reference code, the decay starts as the true average of the weights so far,
min(1 - 1 / (t + 1), ema) after t steps: the teacher does not keep the random initial network
for hundreds of steps. Consistency: ||softmax(student(x')) - softmax(teacher(x''))||^2 over two
augmentations of each unlabelled image; the paper's weight of 100 on the class-averaged error
(CIFAR-10) is 10 on our class sum, ramped up (sigmoid) over the reference's 40,000 steps.
The saved classifier is the student (what the optimiser trained); the teacher is in the
checkpoint under ``teacher``.
"""
from __future__ import annotations

import torch
from torch import nn

from ...blocks.ema import ema_update, frozen_copy
from ...engine import Batch
from ...views import ImageInfo
from ...errors import SelfsupError
from .base import Common, SemiSupervised, squared_error


class MeanTeacher(SemiSupervised):
    weak_views = 2
    default_weight = 10.0
    default_rampup_steps = 40_000

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common(), *,
                 ema: float = 0.99) -> None:
        super().__init__(encoder, num_classes, image, common)
        if not 0.0 <= ema < 1.0:
            raise SelfsupError(f"the teacher's EMA decay must be in [0, 1), got {ema}")
        self.ema = ema
        self.teacher = frozen_copy(torch.nn.ModuleDict({"encoder": self.encoder, "head": self.head}))

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher["head"](self.teacher["encoder"](x)).float()

    def unlabelled_loss(self, batch: Batch, logits: torch.Tensor, extra: list[torch.Tensor],
                        unlabelled: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = self.teacher_logits(batch.views[1][unlabelled]).softmax(1)
        return squared_error(logits[unlabelled].softmax(1), target), {}

    def teacher_decay(self) -> float:
        """min(1 - 1 / (t + 1), ema) after t optimiser steps (the reference's warm start)."""
        return min(1.0 - 1.0 / (int(self.steps_done) + 1), self.ema)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        super().after_step(progress)  # counts the step
        # BatchNorm statistics averaged like the weights (the reference code runs the teacher in
        # train mode, which gives it running averages of its own).
        ema_update(self.teacher, torch.nn.ModuleDict({"encoder": self.encoder, "head": self.head}),
                   self.teacher_decay(), buffers="average")
