"""The method registry: a plain dict from config name to class."""
from __future__ import annotations

import inspect

from torch import nn

from ..arguments import check_kwargs
from ..errors import SelfsupError, closest
from ..views import ImageInfo
from .barlow_twins import BarlowTwins
from .base import INJECTED_ARGS, Method
from .byol import BYOL
from .composite import Composite
from .context import ContextPrediction
from .counting import Counting
from .cpc import CPC
from .decoupled_rotnet import DecoupledRotNet
from .dino import DINO
from .exemplar import Exemplar
from .jigsaw import Jigsaw
from .maskfeat import MaskFeat
from .moco import MoCo
from .multitask import MultiTask
from .npid import NPID
from .pirl import PIRL
from .rotation import Rotation
from .selfie import Selfie
from .simclr import SimCLR
from .simsiam import SimSiam

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
    "moco": MoCo,
    "cpc": CPC,
    # Non-contrastive: agreement between views without negatives.
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "dino": DINO,
    # Several objectives in one.
    "composite": Composite,
    # Masked prediction.
    "maskfeat": MaskFeat,
    "selfie": Selfie,
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise SelfsupError(f"unknown method '{name}'{closest(name, METHODS)}; "
                           f"available: {', '.join(METHODS)} (see `selfsup pretrain --list-methods`)")
    return METHODS[name]


def describe_methods() -> list[tuple[str, str]]:
    """(name, first line of the class docstring) for every method."""
    return [(name, (cls.__doc__ or "").strip().splitlines()[0]) for name, cls in METHODS.items()]


def build_method(name: str, method_args: dict, view_args: dict, backbone: nn.Module, image: ImageInfo,
                 num_images: int = 0, seed: int = 0) -> Method:
    """Method ``name`` around ``backbone`` for images described by ``image``.

    ``method_args`` and ``view_args`` are the (validated) ``method`` and ``views`` config sections;
    nested settings may be plain mappings, as a config file holds them.
    """
    method_cls = get_method(name)
    views = method_cls.views_class(image, **check_kwargs("views", view_args, method_cls.views_class, skip=("image",)))
    args = check_kwargs("method", method_args, method_cls, skip=INJECTED_ARGS)
    return instantiate(method_cls, backbone, views, args, num_images, seed)


def instantiate(method_cls: type[Method], backbone: nn.Module, views: nn.Module, method_args: dict,
                num_images: int, seed: int) -> Method:
    """``method_cls`` with its config arguments plus those only the run knows, where its constructor
    takes them: the bank size of memory-bank methods and the seed of their sampler."""
    accepted = inspect.signature(method_cls).parameters
    known = {"num_images": num_images, "seed": seed}
    return method_cls(backbone, views, **method_args, **{k: v for k, v in known.items() if k in accepted})


__all__ = ["BYOL", "CPC", "DINO", "INJECTED_ARGS", "METHODS", "NPID", "PIRL", "BarlowTwins", "Composite", "ContextPrediction", "Counting",
           "DecoupledRotNet", "Exemplar", "Jigsaw", "MaskFeat", "Method", "MoCo", "MultiTask", "Rotation", "Selfie", "SimCLR",
           "SimSiam", "build_method", "describe_methods", "get_method"]
