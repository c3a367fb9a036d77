"""Multi-task pretext learning: one trunk, several pretext heads, a weighted sum of losses.

Doersch & Zisserman. "Multi-task Self-Supervised Visual Learning", ICCV 2017
(arXiv:1708.07860).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SelfsupError, closest
from .base import Method


class MultiTaskViews(nn.Module):
    """The views of every task, one after the other in one list; built by :class:`MultiTask`."""

    def __init__(self, image_size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.image = (image_size, channels, mean, std)
        self.tasks = nn.ModuleDict()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [view for generator in self.tasks.values() for view in generator(images)]


def borrow(module: nn.Module, name: str) -> None:
    """Keep ``module.<name>`` usable but owned by the parent (no duplicate state-dict entries)."""
    child = module._modules.pop(name)
    object.__setattr__(module, name, child)


class MultiTask(Method):
    """Multi-task pretext (Doersch & Zisserman 2017): a shared backbone, one head per pretext task.

    ``tasks`` maps registered pretext methods (rotation, jigsaw, context_prediction,
    exemplar, counting, ...) to loss weights; ``task_args`` gives each task its method
    arguments and, under ``views``, its view arguments, e.g.
    ``{"jigsaw": {"views": {"num_permutations": 100}, "tile_dim": 256}}``.
    The paper combined relative position, colourisation, exemplar and motion segmentation
    with equal weights (motion and colour need video and Lab images and are not here).
    """

    views_class = MultiTaskViews
    injected_args = ("backbone", "views", "num_images", "seed")

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int, seed: int = 0,
                 tasks: dict[str, float] | None = None, task_args: dict[str, dict] | None = None) -> None:
        from . import METHODS, instantiate
        from ..config import check_kwargs, VIEW_INJECTED_ARGS

        super().__init__(backbone, views)
        tasks = dict(tasks or {"rotation": 1.0, "jigsaw": 1.0})
        task_args = dict(task_args or {})
        pretext = [n for n, cls in METHODS.items() if cls is not MultiTask]
        for name in [*tasks, *task_args]:
            if name not in pretext:
                raise SelfsupError(f"method.tasks: unknown task '{name}'{closest(name, pretext)}")
        self.weights = tasks
        self.heads = nn.ModuleDict()
        self.view_counts: dict[str, int] = {}
        for name in tasks:
            cls = METHODS[name]
            args = dict(task_args.get(name, {}))
            view_args = check_kwargs(f"method.task_args.{name}.views", args.pop("views", {}) or {}, cls.views_class,
                                     skip=VIEW_INJECTED_ARGS)
            method_args = check_kwargs(f"method.task_args.{name}", args, cls, skip=cls.injected_args)
            task_views = cls.views_class(*views.image, **view_args)
            views.tasks[name] = task_views
            head = instantiate(cls, backbone, task_views, method_args, num_images, seed)
            borrow(head, "backbone")
            borrow(head, "views")
            self.heads[name] = head
            self.view_counts[name] = task_views.num_outputs

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        start = 0
        for name, head in self.heads.items():
            count = self.view_counts[name]
            loss = head(views[start:start + count], index)["loss"]
            start += count
            out[f"{name}_loss"] = loss.detach()
            total = total + self.weights[name] * loss
        out["loss"] = total
        return out

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        for head in self.heads.values():
            head.after_step(progress)
