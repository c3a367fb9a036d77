"""The method registry: a plain dict from config name to class."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SelfsupError, closest
from .base import Method
from .simclr import SimCLR

if TYPE_CHECKING:
    from ..config import RunConfig

METHODS: dict[str, type[Method]] = {
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
    return method_cls(backbone, views, **config.method_args)


__all__ = ["METHODS", "Method", "SimCLR", "build_method", "describe_methods", "get_method"]
