"""Teachers that follow their students by exponential moving average.

The target network of BYOL (Grill et al. 2020), the key encoder of MoCo (He et al. 2020), the
teacher of DINO (Caron et al. 2021): theta_t <- m * theta_t + (1 - m) * theta_s after every
optimiser step (the engine calls the method's ``after_step``), with m from a schedule.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from ..models.vit import without_drop_path

BufferPolicy = Literal["copy", "average", "keep"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that takes no gradient: the starting point of a teacher."""
    teacher = copy.deepcopy(module)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, buffers: BufferPolicy = "copy") -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student for every parameter, in fused groups.

    ``buffers`` says what happens to buffers (BatchNorm statistics), explicitly:
    ``copy`` takes the student's (timm's EMA models of a trained network),
    ``average`` averages floating-point buffers like parameters and copies the others (counters:
    Mean Teacher's teacher, FixMatch's and MixMatch's evaluated averages),
    ``keep`` leaves them to the teacher's own forward passes in train mode (MoCo, BYOL, DINO, as
    their references).
    """
    targets, sources = _pairs(teacher.named_parameters(), student.named_parameters(), "parameter")
    averaged, copied = [], []
    if buffers != "keep":
        for target, source in zip(*_pairs(teacher.named_buffers(), student.named_buffers(), "buffer")):
            (averaged if buffers == "average" and target.is_floating_point() else copied).append((target, source))
    targets += [target for target, _ in averaged]
    sources += [source for _, source in averaged]
    # One fused kernel per group instead of two per tensor (a Python loop over every parameter).
    for group in _same_kind(targets, sources):
        torch._foreach_lerp_(*group, 1.0 - momentum)  # t + (1 - m)(s - t) = m t + (1 - m) s
    for target, source in copied:
        target.copy_(source)


def _pairs(teacher: Iterable[tuple[str, torch.Tensor]], student: Iterable[tuple[str, torch.Tensor]],
           kind: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The teacher's tensors and the student's of the same names, in the teacher's order."""
    sources = dict(student)
    targets, matched = [], []
    for name, tensor in teacher:
        if name not in sources:
            raise ValueError(f"teacher {kind} '{name}' has no counterpart in the student")
        targets.append(tensor)
        matched.append(sources[name].detach())
    return targets, matched


def _same_kind(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> list[tuple[list, list]]:
    """``(targets, sources)`` split by the targets' device and dtype, the sources cast to match (foreach
    ops take one kind of tensor per call)."""
    groups: dict[tuple, tuple[list, list]] = {}
    for target, source in zip(targets, sources):
        group = groups.setdefault((target.device, target.dtype), ([], []))
        group[0].append(target)
        group[1].append(source.to(device=target.device, dtype=target.dtype))
    return list(groups.values())


def momentum_schedule(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL's cosine increase of the EMA momentum from ``base`` (progress 0) to ``final`` (progress 1):
    m = final - (final - base) * (cos(pi * progress) + 1) / 2 (0.996 -> 1 in the paper)."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class Teacher(nn.Module):
    """A gradient-free moving average of a student's backbone and head: MoCo's key encoder,
    BYOL's target network, DINO's teacher.

    ``follow(backbone, head, momentum)`` moves it towards the student after an optimiser step;
    ``buffers`` is the :func:`ema_update` policy for BatchNorm statistics (``keep``: the teacher
    runs in train mode and keeps its own, as in MoCo, BYOL and DINO). A student ViT's stochastic
    depth is switched off in the teacher (DINO builds its teacher without it).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, buffers: BufferPolicy = "keep") -> None:
        super().__init__()
        self.backbone = without_drop_path(frozen_copy(backbone))
        self.head = frozen_copy(head)
        self.buffers = buffers

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def follow(self, backbone: nn.Module, head: nn.Module, momentum: float) -> None:
        ema_update(self.backbone, backbone, momentum, self.buffers)
        ema_update(self.head, head, momentum, self.buffers)
