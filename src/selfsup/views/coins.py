"""Flip, grayscale, solarize and normalisation; each image of a batch tosses its own coin for the random ones.

Each op computes its transform for the whole batch and keeps it where the image's coin came up
(``torch.where``): a few elementwise kernels, nothing waits on the host. kornia's
``RandomHorizontalFlip``, ``RandomGrayscale``, ``RandomSolarize`` and ``Normalize``, used before,
blend the same way but through their general machinery (parameter dictionaries, input checks, a
transformation matrix per image for the flip), which on small images costs more than the
arithmetic: together 1.2-1.9 ms of a BYOL view's 4 ms on an H200 (benchmarks/gpu_views.py,
RESULTS 31). The results are the same as theirs for the same coins (tested): torchvision's luma
for grayscale, BYOL's solarize at 0.5.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import SelfsupError
from .color import luma


def toss(x: torch.Tensor, p: float, transform: Callable[[torch.Tensor], torch.Tensor]
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``transform(x)`` for each image (first dimension) with probability ``p``, the others as they
    are; and the coins (B,) bool."""
    drawn = torch.rand(len(x), device=x.device) < p
    return torch.where(drawn.view(-1, *[1] * (x.ndim - 1)), transform(x), x), drawn


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) -> its ITU-R 601 luma in all three channels (torchvision's ``rgb_to_grayscale``)."""
    return luma(x).expand_as(x)


class Coin(nn.Module):
    """Apply :meth:`transform` to each image with probability ``p``; the others pass unchanged.
    ``last_drawn`` (B,) bool holds the coins of the last call."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise SelfsupError(f"a probability must lie in [0, 1], got {p}")
        self.p = p
        self.last_drawn: torch.Tensor | None = None

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self.last_drawn = toss(x, self.p, self.transform)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RandomHorizontalFlip(Coin):
    """Mirror left to right."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


class RandomGrayscale(Coin):
    """RGB -> :func:`grayscale`."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return grayscale(x)


class RandomSolarize(Coin):
    """Invert the pixels at or above ``threshold`` (x -> 1 - x), in [0, 1] images; BYOL's is 0.5
    (Grill et al. 2020, Table 6)."""

    def __init__(self, p: float, threshold: float = 0.5) -> None:
        super().__init__(p)
        self.threshold = threshold

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < self.threshold, x, 1.0 - x)

    def extra_repr(self) -> str:
        return f"p={self.p}, threshold={self.threshold}"


class Normalize(nn.Module):
    """(x - mean) / std per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
