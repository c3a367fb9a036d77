"""What the engine fits and with what: the batch a module receives, the contracts of the module, the
loader and the online probe, freezes, and the error of a diverged run."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from ..errors import SelfsupError


class Batch(NamedTuple):
    """What a module's forward receives: the views its ``views`` made, labels (-1: none), dataset indices."""

    views: list[torch.Tensor]
    targets: torch.Tensor
    index: torch.Tensor


class Trainable(Protocol):
    """What the engine fits (a self-supervised method, a learner): a module whose ``views`` turn a
    uint8 batch into its inputs, whose forward returns ``{"loss": ..., other scalars to log}``, and
    whose ``param_groups`` name its parameter groups (``lr_scale`` / ``wd_scale`` per group). An
    ``after_step(progress)`` method, when it has one, runs after each optimiser step (EMA teachers,
    momentum schedules)."""

    views: Callable[[torch.Tensor], list[torch.Tensor]]

    def __call__(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]: ...
    def param_groups(self) -> list[dict[str, Any]]: ...


class Loader(Protocol):
    batch_size: int

    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: ...


class Probe(Protocol):
    """A classifier trained beside the run on its frozen features (the online linear probe)."""

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]: ...
    def evaluate(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLoss(SelfsupError):
    """The loss became NaN or infinite; the weights and the optimiser were not updated with it (state a
    forward updates, such as a queue or a centre, may have moved: the run resumes from ``last.pt``)."""


@dataclass(frozen=True)
class Freeze:
    """Parameters whose names start with ``prefix`` do not train before step ``until_step``: their
    gradients are dropped (so neither the optimiser nor weight decay moves them) and their
    BatchNorm layers keep their statistics (eval mode)."""

    prefix: str
    until_step: int
