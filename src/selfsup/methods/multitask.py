"""Multi-task pretext learning: one trunk, several pretext heads, a weighted sum of losses.

Doersch & Zisserman. "Multi-task Self-Supervised Visual Learning", ICCV 2017
(arXiv:1708.07860).
"""
from __future__ import annotations

import torch
from torch import nn

from ..arguments import check_kwargs
from ..engine import Batch
from ..errors import SelfsupError, closest
from ..views import ImageInfo
from .base import INJECTED_ARGS, Method


class MultiTaskViews(nn.Module):
    """The views of every task, one after the other in one list; the tasks are added by :class:`MultiTask`."""

    def __init__(self, image: ImageInfo) -> None:
        super().__init__()
        self.image = image
        self.tasks = nn.ModuleDict()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [view for generator in self.tasks.values() for view in generator(images)]


def borrow_trunk(task: Method) -> Method:
    """``task`` referencing its backbone and views without registering them: their owner (the
    multi-task method) holds them in its state dict, once."""
    for name in ("backbone", "views"):
        module = task._modules.pop(name)
        object.__setattr__(task, name, module)  # a plain attribute: not a submodule, not in state_dict()
    return task


class MultiTask(Method):
    """Multi-task pretext (Doersch & Zisserman 2017): a shared backbone, one head per pretext task.

    ``tasks`` maps registered pretext methods (rotation, jigsaw, context_prediction,
    exemplar, counting, ...) to loss weights; ``task_args`` gives each task its method
    arguments and, under ``views``, its view arguments, e.g.
    ``{"jigsaw": {"views": {"num_permutations": 100}, "tile_dim": 256}}``.
    The paper combined relative position, colourisation, exemplar and motion segmentation
    (motion and colour need video and Lab images and are not here). Each task is the registered
    method built on the trunk and views owned here, which it references without registering
    them (:func:`borrow_trunk`), so the state dict holds them once. What a task's constructor does
    to its trunk it does to the shared one: MoCo's split BatchNorm (``bn_splits``) then normalises
    every task over sub-batches; ``task_args: {moco: {bn_splits: 1}}`` keeps plain BatchNorm.
    """

    views_class = MultiTaskViews
    trains_on_tiles = True  # the default tasks include jigsaw

    def __init__(self, backbone: nn.Module, views: nn.Module, *, num_images: int, seed: int = 0,
                 tasks: dict[str, float] | None = None, task_args: dict[str, dict] | None = None) -> None:
        from . import METHODS, instantiate

        super().__init__(backbone, views)
        tasks = dict(tasks or {"rotation": 1.0, "jigsaw": 1.0})
        task_args = dict(task_args or {})
        pretext = [n for n, cls in METHODS.items() if cls is not MultiTask]
        for name in [*tasks, *task_args]:
            if name not in pretext:
                raise SelfsupError(f"method.tasks: unknown task '{name}'{closest(name, pretext)}")
        self.weights = tasks
        self.heads = nn.ModuleDict()
        for name in tasks:
            cls = METHODS[name]
            args = dict(task_args.get(name, {}))
            view_args = check_kwargs(f"method.task_args.{name}.views", args.pop("views", {}) or {},
                                     cls.views_class, skip=("image",))
            method_args = check_kwargs(f"method.task_args.{name}", args, cls, skip=INJECTED_ARGS)
            views.tasks[name] = cls.views_class(views.image, **view_args)
            self.heads[name] = borrow_trunk(instantiate(cls, backbone, views.tasks[name], method_args, num_images,
                                                        seed))

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        start = 0
        for name, head in self.heads.items():
            count = self.views.tasks[name].num_outputs
            loss = head(batch._replace(views=batch.views[start:start + count]), progress)["loss"]
            start += count
            out[f"{name}_loss"] = loss.detach()
            total = total + self.weights[name] * loss
        out["loss"] = total
        return out

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        for head in self.heads.values():
            head.after_step(progress)
