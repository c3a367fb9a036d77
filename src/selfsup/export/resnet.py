"""Our ResNet as a plain torchvision or timm ResNet.

``backbone.net`` already is a torchvision ResNet (``fc`` removed), and timm's ResNet uses the
same parameter names (conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0), so the state
dict is the same for both; the recipes differ in how they rebuild the stem and the width.
"""
from __future__ import annotations

from ..models.backbones import RESNET_BLOCKS, ResNet
from .target import Target, load_lines, python_arguments


def _stage_channels(width: int) -> list[int]:
    return [width, 2 * width, 4 * width, 8 * width]


def _stem(arch: dict, norm: str) -> list[str]:
    """Recipe lines replacing the first convolution (and its norm) for another stem, width or channel count."""
    channels, width, small_stem = arch["in_channels"], arch["width"], arch["small_stem"]
    conv = (f"nn.Conv2d({channels}, {width}, kernel_size=3, stride=1, padding=1, bias=False)" if small_stem
            else f"nn.Conv2d({channels}, {width}, kernel_size=7, stride=2, padding=3, bias=False)")
    lines = [f"model.conv1 = {conv}", f"model.bn1 = {norm}"]
    if small_stem:
        lines.append("model.maxpool = nn.Identity()  # small-image stem")
    return lines


def _changes(arch: dict) -> list[str]:
    changes = []
    if arch["in_channels"] != 3:
        changes.append(f"conv1 takes {arch['in_channels']}-channel images")
    if arch["small_stem"]:
        changes.append("conv1: 3x3 stride 1 (small-image stem); maxpool removed")
    if arch["width"] != 64:
        stages = "/".join(map(str, _stage_channels(arch["width"])))
        changes.append(f"width {arch['width']}: stages of {stages} channels")
    changes.append("no classifier: the model returns the pooled features")
    return changes


def torchvision_recipe(arch: dict, weights_file: str) -> str:
    """Python source that builds the torchvision ResNet matching ``arch`` and loads ``weights_file``."""
    depth, channels, small_stem, width = arch["depth"], arch["in_channels"], arch["small_stem"], arch["width"]
    imports, load = load_lines(weights_file)
    lines = imports + ["import torch", "import torchvision", "from torch import nn", ""]
    layer_norm = arch.get("norm", "batch") == "layer"
    if layer_norm:  # CPC v2's patch encoder: every BatchNorm a one-group GroupNorm (per-sample layer norm)
        lines.append(f"model = torchvision.models.resnet{depth}(norm_layer=lambda channels: nn.GroupNorm(1, channels))")
    else:
        lines.append(f"model = torchvision.models.resnet{depth}()")
    if small_stem or channels != 3 or width != 64:
        lines += _stem(arch, f"nn.GroupNorm(1, {width})" if layer_norm else f"nn.BatchNorm2d({width})")
    if width != 64:
        block = "Bottleneck" if depth == 50 else "BasicBlock"
        lines += [f"# width {width}: every stage rebuilt with {'/'.join(map(str, _stage_channels(width)))} channels",
                  f"block = torchvision.models.resnet.{block}", f"model.inplanes = {width}"]
        for i, (n, scale) in enumerate(zip(RESNET_BLOCKS[depth], (1, 2, 4, 8)), start=1):
            stride = "" if i == 1 else ", stride=2"
            lines.append(f"model.layer{i} = model._make_layer(block, {scale * width}, {n}{stride})")
    lines.append("model.fc = nn.Identity()  # the encoder's features; add your own classifier")
    lines.append(f"model.load_state_dict({load})")
    return "\n".join(lines) + "\n"


def timm_arguments(arch: dict) -> dict:
    """Keyword arguments of ``timm.create_model(f"resnet{depth}", ...)`` for ``arch``."""
    arguments = {"num_classes": 0, "in_chans": arch["in_channels"]}
    if arch.get("norm", "batch") == "layer":
        arguments["norm_layer"] = "groupnorm1"  # timm.layers.GroupNorm1: nn.GroupNorm(1, c)
    if arch["width"] != 64:
        arguments["channels"] = tuple(_stage_channels(arch["width"]))
    return arguments


def timm_resnet_recipe(arch: dict, weights_file: str) -> str:
    """Python source that builds the timm ResNet matching ``arch`` and loads ``weights_file``.

    timm's plain stem is 64 channels wide whatever ``channels`` says, so another width gets its
    stem and first stage rebuilt (with timm's own ``make_blocks``), as the torchvision recipe does."""
    depth, width = arch["depth"], arch["width"]
    layer_norm = arch.get("norm", "batch") == "layer"
    imports, load = load_lines(weights_file)
    lines = imports + ["import timm", "import torch", "from torch import nn", "",
                       f"model = timm.create_model('resnet{depth}', {python_arguments(timm_arguments(arch))})"]
    if arch["small_stem"] or width != 64:
        lines += _stem(arch, f"timm.layers.GroupNorm1({width})" if layer_norm else f"nn.BatchNorm2d({width})")
    if width != 64:
        block = "Bottleneck" if depth == 50 else "BasicBlock"
        norm = ", norm_layer=timm.layers.GroupNorm1" if layer_norm else ""
        lines += [f"# timm's stem is 64 wide: the first stage rebuilt to take the {width} channels of this stem",
                  (f"stages, _ = timm.models.resnet.make_blocks((timm.models.resnet.{block},), ({width},), "
                   f"({RESNET_BLOCKS[depth][0]},), inplanes={width}{norm})"),
                  "model.layer1 = stages[0][1]"]
    lines.append(f"model.load_state_dict({load})")
    return "\n".join(lines) + "\n"


def resnet_target(backbone: ResNet, library: str) -> Target:
    """``backbone`` as a torchvision or timm ResNet (the same state dict for both)."""
    arch = backbone.arch
    weights = {k: v.detach().contiguous() for k, v in backbone.net.state_dict().items()}
    if library == "timm":
        return Target("timm", f"resnet{arch['depth']}", timm_arguments(arch), weights,
                      lambda weights_file: timm_resnet_recipe(arch, weights_file), _changes(arch))
    arguments = {"norm_layer": "nn.GroupNorm(1, channels)"} if arch.get("norm", "batch") == "layer" else {}
    return Target("torchvision", f"resnet{arch['depth']}", arguments, weights,
                  lambda weights_file: torchvision_recipe(arch, weights_file), _changes(arch))
