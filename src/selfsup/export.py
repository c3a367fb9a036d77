"""``selfsup export``: backbone weights that load into a plain torchvision model; ``selfsup import``:
the other way, a torchvision ResNet's weights as a selfsup checkpoint.

The weights file holds the state dict of ``torchvision.models.resnetNN`` (without ``fc``);
the sidecar JSON holds the architecture, the normalisation the encoder expects, and the
few lines of torchvision code that build the matching model. Nothing of selfsup is
needed to use them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .config import RunConfig
from .data import load_splits
from .engine import checkpoint
from .errors import SelfsupError
from .models.backbones import RESNET_BLOCKS, ResNet
from .recipes.evaluate import load_encoder


def torchvision_recipe(arch: dict, weights_file: str) -> str:
    """Python source that builds the torchvision ResNet matching ``arch`` and loads ``weights_file``."""
    depth, channels, small_stem, width = arch["depth"], arch["in_channels"], arch["small_stem"], arch["width"]
    lines = ["import torch", "import torchvision", "from torch import nn", ""]
    if weights_file.endswith(".safetensors"):
        lines.insert(0, "from safetensors.torch import load_file")
    layer_norm = arch.get("norm", "batch") == "layer"
    if layer_norm:  # CPC v2's patch encoder: every BatchNorm a one-group GroupNorm (per-sample layer norm)
        lines.append(f"model = torchvision.models.resnet{depth}(norm_layer=lambda channels: nn.GroupNorm(1, channels))")
    else:
        lines.append(f"model = torchvision.models.resnet{depth}()")
    if small_stem or channels != 3 or width != 64:
        conv = (f"nn.Conv2d({channels}, {width}, kernel_size=3, stride=1, padding=1, bias=False)" if small_stem
                else f"nn.Conv2d({channels}, {width}, kernel_size=7, stride=2, padding=3, bias=False)")
        norm = f"nn.GroupNorm(1, {width})" if layer_norm else f"nn.BatchNorm2d({width})"
        lines += [f"model.conv1 = {conv}", f"model.bn1 = {norm}"]
    if small_stem:
        lines.append("model.maxpool = nn.Identity()  # small-image stem")
    if width != 64:
        block = "Bottleneck" if depth == 50 else "BasicBlock"
        blocks = RESNET_BLOCKS[depth]
        lines += [f"# width {width}: every stage rebuilt with {width}/{2 * width}/{4 * width}/{8 * width} channels",
                  f"block = torchvision.models.resnet.{block}", f"model.inplanes = {width}"]
        for i, (n, scale) in enumerate(zip(blocks, (1, 2, 4, 8)), start=1):
            stride = "" if i == 1 else ", stride=2"
            lines.append(f"model.layer{i} = model._make_layer(block, {scale * width}, {n}{stride})")
    lines.append("model.fc = nn.Identity()  # the encoder's features; add your own classifier")
    load = f"load_file('{weights_file}')" if weights_file.endswith(".safetensors") \
        else f"torch.load('{weights_file}', weights_only=True)"
    lines.append(f"model.load_state_dict({load})")
    return "\n".join(lines) + "\n"


def export_backbone(checkpoint_path: str | Path, out: str | Path) -> dict:
    """Write the backbone of ``checkpoint_path`` to ``out`` (.safetensors or .pt) and ``out``.json."""
    out = Path(out)
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise SelfsupError(f"--out {out}: use a .safetensors (recommended) or .pt file name")
    backbone, config, state = load_encoder(checkpoint_path)
    head_layers = state.get("encoder", {}).get("head_layers", 0)
    if head_layers:
        raise SelfsupError(f"{state['path']} was fine-tuned with {head_layers} projection-head layer(s) on its "
                           "trunk, which a torchvision ResNet has no place for; export the pretraining checkpoint, "
                           "or a network fine-tuned with --head-layers 0")
    if not isinstance(backbone, ResNet):
        raise SelfsupError(f"export to torchvision needs a ResNet backbone; this checkpoint uses "
                           f"'{config.backbone.name}'")
    weights = {k: v.contiguous() for k, v in backbone.net.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(out))
    else:
        torch.save(weights, out)
    info = {
        "architecture": f"torchvision resnet{backbone.arch['depth']}", **backbone.arch,
        "num_features": backbone.num_features, "input": {
            "channels": state["data"]["channels"], "image_size": state["data"]["image_size"],
            "mean": state["data"]["mean"], "std": state["data"]["std"],
            "note": "pixels scaled to [0, 1], then (x - mean) / std"},
        "source": {"checkpoint": state["path"], "step": state["step"], "method": config.method_name},
        "recipe": torchvision_recipe(backbone.arch, out.name),
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from .safetensors or a weights-only .pt/.pth (``state_dict``/``model``
    wrappers and DataParallel's ``module.`` prefixes removed)."""
    if not path.is_file():
        raise SelfsupError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
    else:
        weights = checkpoint.read_weights_only(path)
        for key in ("state_dict", "model"):
            if isinstance(weights, dict) and isinstance(weights.get(key), dict):
                weights = weights[key]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise SelfsupError(f"{path} holds no state dict of tensors (a torchvision model's `state_dict()`)")
    return {k.removeprefix("module."): v for k, v in weights.items()}


def import_torchvision(weights_file: str | Path, run_dir: str | Path, config: RunConfig, quiet: bool = False) -> Path:
    """Write ``run_dir/checkpoints/last.pt``: a selfsup checkpoint of a torchvision ResNet's weights
    (the backbone of ``config``, ``fc`` dropped) for the images of ``config.data``, so that every
    command taking a checkpoint (eval, finetune, distill, cluster, export) takes it.

    A 3-channel first convolution on 1-channel data is summed over its input channels: what the
    network computes on a gray image repeated in three channels.
    """
    weights_file, run_dir = Path(weights_file), Path(run_dir)
    target = run_dir / "checkpoints" / "last.pt"
    if target.exists():
        raise SelfsupError(f"{run_dir} already holds a run; choose a new --run-dir")
    weights = {k: v for k, v in read_state_dict(weights_file).items() if not k.startswith("fc.")}
    conv1 = weights.get("conv1.weight")
    if conv1 is not None:  # the stem and width are in the weights; an explicit small_stem still decides
        stem = config.backbone.small_stem if config.backbone.small_stem is not None else conv1.shape[-1] == 3
        config = dataclasses.replace(config, backbone=dataclasses.replace(
            config.backbone, width=conv1.shape[0], small_stem=stem))
    info = load_splits(config.data, seed=config.train.seed, quiet=quiet).info()
    backbone = config.backbone.build(info["channels"], info["image_size"])
    if not isinstance(backbone, ResNet):
        raise SelfsupError(f"importing torchvision weights needs a ResNet backbone (resnet18/34/50), "
                           f"got '{config.backbone.name}'")
    if conv1 is not None and conv1.shape[1] == 3 and info["channels"] == 1:
        weights["conv1.weight"] = conv1.sum(1, keepdim=True)
    checkpoint.load_weights(backbone.net, weights, f"{weights_file} (as torchvision {config.backbone.name}, "
                                                   f"width {config.backbone.width}, small_stem "
                                                   f"{backbone.arch['small_stem']})")
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": config.to_dict(), "data": info,
             "encoder": {"prefix": "backbone", "method": f"torchvision {config.backbone.name}"},
             "imported": {"weights": str(weights_file.resolve())},
             "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "step": 0, "epoch": 0}
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic(state, target)
    return target
