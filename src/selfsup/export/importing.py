"""``selfsup import``: a torchvision ResNet's weights (.pth/.pt/.safetensors) as a selfsup
checkpoint, so that every command taking a checkpoint takes it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import load_splits
from ..engine import checkpoint
from ..errors import SelfsupError
from ..models.backbones import ResNet
from ..recipes.meta import EncoderRef, RunMeta


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from .safetensors or a weights-only .pt/.pth (``state_dict``/``model``
    wrappers and DataParallel's ``module.`` prefixes removed)."""
    if not path.is_file():
        raise SelfsupError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            weights = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError and friends: a damaged or foreign file
            raise SelfsupError(f"{path} is not a readable safetensors file ({str(err)[:200]}); give the weights "
                               "file itself, as torchvision or safetensors wrote it") from None
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
    backbone = config.backbone.build(info.channels, info.image_size)
    if not isinstance(backbone, ResNet):
        raise SelfsupError(f"importing torchvision weights needs a ResNet backbone (resnet18/34/50), "
                           f"got '{config.backbone.name}'")
    if conv1 is not None and conv1.shape[1] == 3 and info.channels == 1:
        weights["conv1.weight"] = conv1.sum(1, keepdim=True)
    checkpoint.load_weights(backbone.net, weights, f"{weights_file} (as torchvision {config.backbone.name}, "
                                                   f"width {config.backbone.width}, small_stem "
                                                   f"{backbone.arch['small_stem']})")
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
             **RunMeta.record(config.to_dict(), info, EncoderRef("backbone", f"torchvision {config.backbone.name}"),
                              imported={"weights": str(weights_file.resolve())}),
             "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "step": 0, "epoch": 0}
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic(state, target)
    return target
