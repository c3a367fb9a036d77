"""Backbones: image (B, C, H, W) -> features (B, num_features), with named stages.

What a backbone provides is written down as two Protocols (after timm's explicit contract):
:class:`Backbone` (every backbone) and :class:`StagedBackbone` (the convolutional ones, run
stage by stage: conv1, res2..res5 in the ResNet naming of the probing papers). A trunk that
wraps a backbone (SimCLR v2's :class:`~selfsup.models.HeadTrunk`, Selfie's
:class:`~selfsup.models.AttentionPoolTrunk`) is unwrapped by :func:`trunk_of`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..arguments import Count, PositiveInt, Range
from ..errors import SelfsupError, closest
from .vit import VisionTransformer, default_patch_size

STAGES = ("conv1", "res2", "res3", "res4", "res5")


@runtime_checkable
class Backbone(Protocol):
    """What every backbone provides: the width of its features, the arguments that rebuild it
    (``arch``: export and checkpoints read it), and whether it runs faster in channels_last."""

    num_features: int
    arch: dict[str, Any]
    prefers_channels_last: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_features)."""


@runtime_checkable
class StagedBackbone(Backbone, Protocol):
    """A backbone run stage by stage (ResNet, the toy network): what the layer-wise probe, per-stage
    transfer modes, cross-stitch units and Selfie's patch network read."""

    stage_names: tuple[str, ...]

    def stage_prefixes(self) -> dict[str, tuple[str, ...]]:
        """Each stage's parameter-name prefixes."""

    def stage_functions(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """(name, function) per stage, in order: feature map in, feature map out."""

    def forward_stages(self, x: torch.Tensor, until: str = "res5") -> dict[str, torch.Tensor]:
        """Each stage's feature map, up to ``until``."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map -> (B, num_features)."""


def trunk_of(encoder: nn.Module) -> nn.Module:
    """The backbone inside an encoder: the wrapped one of a trunk with a head or a pooling on top
    (``encoder.backbone``), else the encoder itself."""
    return getattr(encoder, "backbone", encoder)


def prefers_channels_last(encoder: nn.Module) -> bool:
    """Whether the backbone of ``encoder`` (a method, a trunk or a backbone) runs faster in
    channels_last: convolutional ones do; ViTs and the toy network do not."""
    return bool(getattr(trunk_of(encoder), "prefers_channels_last", False))

#: Residual blocks per stage (res2..res5) of torchvision's ResNets (He et al. 2016, Table 1).
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


@dataclass
class BackboneConfig:
    """The encoder network (the ``backbone`` section of a run config)."""

    name: str = "resnet18"
    """resnet18, resnet34, resnet50, or toy (tests)."""
    small_stem: bool | None = None
    """3x3 stride-1 first conv and no max-pool, for 28-64 px images; None: when image_size <= 64."""
    width: PositiveInt = 64
    """ResNet: channels of the first stage (64 in torchvision); 32 or 16 for CPU-sized experiments.
    A ViT's size is in its name (vit_tiny, vit_small)."""
    patch_size: PositiveInt | None = None
    """ViT: patch side in pixels; None: 4 up to 32 px images, 8 up to 96 px, 16 above."""
    registers: Count = 0
    """ViT: register tokens (Darcet et al. 2024); 0 = none."""
    drop_path: Annotated[float, Range(0, 1, open_high=True)] = 0.0
    """ViT: stochastic depth (Huang et al. 2016): each block's residual branches are dropped per
    sample in training, at a rate rising linearly over the blocks to this value (DINO's students:
    0.1; a momentum teacher never drops)."""
    norm: str = "batch"
    """ResNet and toy: ``batch`` (BatchNorm) or ``layer`` (one group of GroupNorm: each sample
    normalised over its channels and positions alone, CPC v2's layer norm, so that no image
    sees another's statistics)."""
    pool: Literal["cls", "mean"] = "cls"
    """ViT: the features it returns, ``cls`` (the final [CLS] token: DINO, iBOT) or ``mean`` (the
    mean of the final patch tokens: MaskFeat's and MAE's classifiers, whose presets set it)."""

    def build(self, in_channels: int, image_size: int) -> nn.Module:
        """This backbone for images of ``in_channels`` x ``image_size``^2."""
        return build_backbone(self.name, in_channels, image_size, self.small_stem, self.width,
                              patch_size=self.patch_size, registers=self.registers, norm=self.norm,
                              drop_path=self.drop_path, pool=self.pool)


NORMS: dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm2d, "layer": lambda channels: nn.GroupNorm(1, channels)}


def torchvision_resnet(depth: int = 18, in_channels: int = 3, small_stem: bool = False, width: int = 64,
                       norm: str = "batch") -> torchvision.models.ResNet:
    """A plain ``torchvision.models.ResNet`` with the classifier removed (``fc = Identity``).

    ``small_stem`` (SimCLR's CIFAR variant, Chen et al. 2020 App. B.9): a 3x3 stride-1 first
    convolution and no max-pool, so 28-32 px images keep their resolution into res2.
    ``width`` scales every stage (64 -> 64/128/256/512 channels as in torchvision).
    ``norm``: a key of :data:`NORMS` (torchvision's ``norm_layer``).
    """
    builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
    if depth not in RESNET_BLOCKS:
        raise SelfsupError(f"ResNet depth {depth} is not available; choose 18, 34 or 50")
    norm_layer = NORMS[norm]
    net = builders[depth](norm_layer=norm_layer)
    if small_stem or in_channels != 3 or width != 64:
        net.inplanes = width
        net.conv1 = (nn.Conv2d(in_channels, width, 3, 1, 1, bias=False) if small_stem
                     else nn.Conv2d(in_channels, width, 7, 2, 3, bias=False))
        net.bn1 = norm_layer(width)
        if small_stem:
            net.maxpool = nn.Identity()
        if width != 64:
            block = Bottleneck if depth == 50 else BasicBlock
            blocks = RESNET_BLOCKS[depth]
            net.layer1 = net._make_layer(block, width, blocks[0])
            net.layer2 = net._make_layer(block, 2 * width, blocks[1], stride=2)
            net.layer3 = net._make_layer(block, 4 * width, blocks[2], stride=2)
            net.layer4 = net._make_layer(block, 8 * width, blocks[3], stride=2)
        # The same initialisation torchvision gives the modules it built.
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    net.fc = nn.Identity()
    return net


class OnePixelSafeConv2d(nn.Conv2d):
    """A strided convolution with "same" padding that runs a 1x1 input at stride 1.

    The output is the same (one pixel, seen by the kernel's centre tap alone), and the gradient
    too. It works around a fault of PyTorch's CPU bf16 convolution (oneDNN, torch 2.14): at
    stride > 1 on a 1x1 input, the weight gradient's border taps, which should be zero, come back
    as uninitialised memory: nonsense in nearly every call, non-finite in some (the weights then
    stop the run). Small inputs meet it: CPC's 4 px patches of 16 px images reach res5 as one
    pixel, as does a 16 px image through the ImageNet stem.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1):
            return F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        return super().forward(x)


def guard_one_pixel_strides(net: nn.Module) -> nn.Module:
    """Every strided, zero-padded "same" convolution of ``net`` becomes a :class:`OnePixelSafeConv2d`
    in place (the class only: parameters, state-dict keys and torchvision's module tree stay)."""
    for module in net.modules():
        if type(module) is nn.Conv2d and module.stride != (1, 1) and module.padding_mode == "zeros" and all(
                2 * pad == dilation * (kernel - 1)
                for pad, dilation, kernel in zip(module.padding, module.dilation, module.kernel_size)):
            module.__class__ = OnePixelSafeConv2d
    return net


class ResNet(nn.Module):
    """torchvision ResNet-18/34/50 as a backbone (He et al. 2016).

    ``self.net`` stays a plain torchvision model, so ``selfsup export`` writes its state dict
    and any torchvision user can load it.
    """

    stage_names = STAGES
    prefers_channels_last = True

    def __init__(self, depth: int = 18, in_channels: int = 3, small_stem: bool = False, width: int = 64,
                 norm: str = "batch") -> None:
        super().__init__()
        self.arch = {"depth": depth, "in_channels": in_channels, "small_stem": small_stem, "width": width}
        if norm != "batch":  # absent from the arch of batch-norm networks, as in checkpoints before the option
            self.arch["norm"] = norm
        self.net = guard_one_pixel_strides(torchvision_resnet(depth, in_channels, small_stem, width, norm))
        self.num_features = 8 * width * (4 if depth == 50 else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def stage_prefixes(self) -> dict[str, tuple[str, ...]]:
        """The parameter-name prefixes of each stage (conv1 = the stem, res2..res5 = layer1..4)."""
        return {"conv1": ("net.conv1.", "net.bn1."), "res2": ("net.layer1.",), "res3": ("net.layer2.",),
                "res4": ("net.layer3.",), "res5": ("net.layer4.",)}

    def stage_functions(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """The stages in order, each a function of the previous one's feature map (cross-stitch networks
        run several trunks stage by stage)."""
        net = self.net
        return [("conv1", lambda x: net.maxpool(net.relu(net.bn1(net.conv1(x))))), ("res2", net.layer1),
                ("res3", net.layer2), ("res4", net.layer3), ("res5", net.layer4)]

    def forward_stages(self, x: torch.Tensor, until: str = "res5") -> dict[str, torch.Tensor]:
        """The feature map of every stage up to ``until`` (the later ones are not computed)."""
        return run_stages(self.stage_functions(), x, until)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map -> the backbone's output features."""
        return torch.flatten(self.net.avgpool(x), 1)


class ToyNet(nn.Module):
    """Five tiny conv stages with the ResNet stage names: for tests, where speed is all."""

    stage_names = STAGES
    prefers_channels_last = False

    def __init__(self, in_channels: int = 3, width: int = 8, norm: str = "batch") -> None:
        super().__init__()
        self.arch = {"in_channels": in_channels, "width": width}
        if norm != "batch":
            self.arch["norm"] = norm

        def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), NORMS[norm](c_out), nn.ReLU())

        widths = (width, width, 2 * width, 4 * width, 4 * width)
        strides = (1, 1, 2, 2, 1)
        c_in = in_channels
        self.stages = nn.ModuleDict()
        for name, c_out, stride in zip(STAGES, widths, strides):
            self.stages[name] = stage(c_in, c_out, stride)
            c_in = c_out
        guard_one_pixel_strides(self.stages)
        self.num_features = widths[-1]

    def stage_prefixes(self) -> dict[str, tuple[str, ...]]:
        return {name: (f"stages.{name}.",) for name in self.stages}

    def stage_functions(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        return list(self.stages.items())

    def forward_stages(self, x: torch.Tensor, until: str = "res5") -> dict[str, torch.Tensor]:
        return run_stages(self.stage_functions(), x, until)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_stages(x)["res5"])


def run_stages(stages: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]], x: torch.Tensor, until: str
               ) -> dict[str, torch.Tensor]:
    """The feature map after every stage up to ``until`` (the later ones are not computed)."""
    out = {}
    for name, stage in stages:
        x = stage(x)
        out[name] = x
        if name == until:
            break
    return out


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda **kw: ResNet(18, **kw),
    "resnet34": lambda **kw: ResNet(34, **kw),
    "resnet50": lambda **kw: ResNet(50, **kw),
    "toy": ToyNet,
    "vit_tiny": lambda **kw: VisionTransformer("tiny", **kw),
    "vit_small": lambda **kw: VisionTransformer("small", **kw),
}


def build_backbone(name: str, in_channels: int, image_size: int, small_stem: bool | None = None,
                   width: int = 64, *, patch_size: int | None = None, registers: int = 0,
                   norm: str = "batch", drop_path: float = 0.0, pool: str = "cls") -> nn.Module:
    """Backbone ``name`` for images of ``in_channels`` x ``image_size``^2.

    ResNets: ``small_stem=None`` picks the small stem for images of 64 px or less. ViTs:
    ``patch_size`` (None: :func:`default_patch_size`), ``registers``, ``drop_path`` and ``pool``. ``norm``: a
    key of :data:`NORMS`.
    """
    if name not in BACKBONES:
        raise SelfsupError(f"unknown backbone '{name}'{closest(name, BACKBONES)}; known: {', '.join(BACKBONES)}")
    if name.startswith("vit_"):
        if width != 64:
            raise SelfsupError(f"backbone.width sets a ResNet's channels; a ViT's size is its name (vit_tiny, "
                               f"vit_small), got width={width}")
        if norm != "batch":
            raise SelfsupError("backbone.norm chooses a ResNet's normalisation; a ViT always uses layer norm")
        return BACKBONES[name](image_size=image_size, in_channels=in_channels,
                               patch_size=patch_size or default_patch_size(image_size), registers=registers,
                               drop_path=drop_path, pool=pool)
    if patch_size is not None or registers or drop_path or pool != "cls":
        raise SelfsupError(f"backbone.patch_size, backbone.registers, backbone.drop_path and backbone.pool are ViT "
                           f"settings; {name} has none of them (it averages its last feature map)")
    if norm not in NORMS:
        raise SelfsupError(f"backbone.norm must be one of {', '.join(NORMS)}, got '{norm}'")
    if width < 1:
        raise SelfsupError(f"backbone.width must be positive, got {width}")
    if small_stem is None:
        small_stem = image_size <= 64
    if name == "toy":
        return ToyNet(in_channels=in_channels, width=width, norm=norm)
    return BACKBONES[name](in_channels=in_channels, small_stem=small_stem, width=width, norm=norm)
