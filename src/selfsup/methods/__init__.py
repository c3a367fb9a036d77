"""The method registry: a plain dict from config name to class."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..errors import SelfsupError, closest
from .base import Method
from .context import ContextPrediction
from .counting import Counting
from .decoupled_rotnet import DecoupledRotNet
from .exemplar import Exemplar
from .jigsaw import Jigsaw
from .multitask import MultiTask
from .npid import NPID
from .pirl import PIRL
from .rotation import Rotation
from .simclr import SimCLR

if TYPE_CHECKING:
    from ..config import RunConfig

METHODS: dict[str, type[Method]] = {
    # Pretext tasks: predict a property of a transform.
    "rotation": Rotation,
    "decoupled_rotnet": DecoupledRotNet,
    "jigsaw": Jigsaw,
    "context_prediction": ContextPrediction,
    "exemplar": Exemplar,
    "counting": Counting,
    "multitask": MultiTask,
    # Contrastive: related vs unrelated samples.
    "npid": NPID,
    "pirl": PIRL,
    "simclr": SimCLR,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise SelfsupError(f"unknown method '{name}'{closest(name, METHODS)}; "
                           f"available: {', '.join(METHODS)} (see `selfsup pretrain --list-methods`)")
    return METHODS[name]


def describe_methods() -> list[tuple[str, str]]:
    """(name, first line of the class docstring) for every method."""
    return [(name, (cls.__doc__ or "").strip().splitlines()[0]) for name, cls in METHODS.items()]


def build_method(config: RunConfig, data: dict) -> Method:
    """Method of ``config`` for images described by ``data`` (channels, image_size, mean, std)."""
    from ..models import build_backbone

    backbone = build_backbone(config.backbone.name, data["channels"], data["image_size"],
                              config.backbone.small_stem, config.backbone.width)
    method_cls = get_method(config.method_name)
    views = method_cls.views_class(data["image_size"], data["channels"], tuple(data["mean"]), tuple(data["std"]),
                                   **config.views)
    return instantiate(method_cls, backbone, views, config.method_args, data.get("images", 0), config.train.seed)


def instantiate(method_cls: type[Method], backbone: nn.Module, views: nn.Module, method_args: dict,
                num_images: int, seed: int) -> Method:
    """``method_cls`` with its config arguments plus those only the run knows, where it takes
    them: the bank size of memory-bank methods and the seed of their sampler."""
    injected = {"num_images": num_images, "seed": seed}
    return method_cls(backbone, views, **method_args,
                      **{k: v for k, v in injected.items() if k in method_cls.injected_args})


__all__ = ["METHODS", "NPID", "PIRL", "ContextPrediction", "Counting", "DecoupledRotNet", "Exemplar", "Jigsaw",
           "Method", "MultiTask", "Rotation", "SimCLR", "build_method", "describe_methods", "get_method"]
