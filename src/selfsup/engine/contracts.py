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


@dataclass
class Precropped:
    """A streaming loader's images: ``base`` (B, C, S, S) uint8, each whole image at the training size
    (the online probe's input, and the input of view generators that do not take crops; None when
    neither needs it: making it costs a worker more than decoding a JPEG), and ``crops``: one
    uint8 batch per view the generator asked for, each cut by a worker from the full-resolution
    image, with ``boxes`` (B, 4): the crop as [x0, y0, x1, y1] fractions of the image."""

    base: torch.Tensor | None
    crops: list[torch.Tensor]
    boxes: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.base if self.base is not None else self.crops[0])

    @property
    def device(self) -> torch.device:
        return (self.base if self.base is not None else self.crops[0]).device

    def to(self, device: torch.device, non_blocking: bool = False) -> Precropped:
        return Precropped(self.base.to(device, non_blocking=non_blocking) if self.base is not None else None,
                          [c.to(device, non_blocking=non_blocking) for c in self.crops],
                          [b.to(device, non_blocking=non_blocking) for b in self.boxes])

    def pin_memory(self) -> Precropped:
        return Precropped(self.base.pin_memory() if self.base is not None else None,
                          [c.pin_memory() for c in self.crops], [b.pin_memory() for b in self.boxes])


Images = torch.Tensor | Precropped
"""What a loader yields as a batch's images."""


def base_images(images: Images) -> torch.Tensor:
    """The uint8 images at the training size, of either kind of batch."""
    if isinstance(images, Precropped):
        if images.base is None:
            raise ValueError("this streamed batch was made without its base images (the loader was told "
                             "nothing reads them)")
        return images.base
    return images


class BadData(SelfsupError):
    """An image of the training data could not be read; the run saved what it had trained."""


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
    def iterate(self, start: int = 0) -> Iterator[tuple[Images, torch.Tensor, torch.Tensor]]: ...


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
