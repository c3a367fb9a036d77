"""What an export produces for one target library: the target model's state dict, its
description for the card, and the recipe that rebuilds it without selfsup."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

FORMATS = ("torchvision", "timm")
#: The oldest releases the recipes are written for (timm: ResNet ``channels`` and the tuple
#: ``make_blocks`` of 1.0; torchvision: ``VisionTransformer`` and ``_make_layer``).
REQUIRES = {"torchvision": "torchvision>=0.19", "timm": "timm>=1.0.31"}


@dataclass
class Target:
    """An encoder translated into a model of ``library``.

    ``weights`` is the state dict of the model that ``recipe(weights_file)`` builds (plain Python
    importing only torch, the library and safetensors); ``model`` and ``arguments`` name its
    constructor, ``changes`` what the recipe alters after construction (for the card)."""

    library: str
    model: str
    arguments: dict
    weights: dict[str, torch.Tensor]
    recipe: Callable[[str], str]
    changes: list[str] = field(default_factory=list)

    def architecture(self) -> dict:
        return {"library": self.library, "requires": REQUIRES[self.library], "model": self.model,
                "arguments": self.arguments, "changes": self.changes}


def load_lines(weights_file: str) -> tuple[list[str], str]:
    """The import and the expression that read ``weights_file`` (.safetensors or a weights-only .pt)."""
    if weights_file.endswith(".safetensors"):
        return ["from safetensors.torch import load_file"], f"load_file({weights_file!r})"
    return [], f"torch.load({weights_file!r}, weights_only=True)"


def python_arguments(arguments: dict) -> str:
    """``key=value, ...`` as Python source (values are JSON-like literals)."""
    return ", ".join(f"{key}={value!r}" for key, value in arguments.items())
