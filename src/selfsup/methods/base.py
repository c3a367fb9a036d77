"""What every method is: a module whose forward turns views into ``{"loss": ...}``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..views import TwoViews


class Method(nn.Module):
    """Base of every method (one level of inheritance, no more).

    A method owns ``backbone`` (the network that is evaluated and exported), ``views``
    (uint8 images -> list of augmented views, run by the trainer without gradient), and its
    heads and state (teachers, banks, queues) as submodules and buffers, so ``state_dict()`` is
    a complete checkpoint.

    Class attributes:
        views_class: the view generator whose keyword arguments form the ``views`` config section.
        injected_args: constructor arguments the builder supplies (not read from the config).
    """

    views_class: type[nn.Module] = TwoViews
    injected_args: tuple[str, ...] = ("backbone", "views")

    def __init__(self, backbone: nn.Module, views: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.views = views

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """views: as made by ``self.views``; index: (B,) dataset indices (for memory banks)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called once after every optimiser step with progress in [0, 1]: EMA and momentum updates."""


def classification(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy and accuracy of a pretext classifier (rotation, permutation, position, exemplar)."""
    logits = logits.float()
    return {"loss": F.cross_entropy(logits, labels), "accuracy": (logits.argmax(1) == labels).float().mean()}
