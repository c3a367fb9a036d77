"""Layer-wise linear probe: how linearly separable are the classes at conv1, res2 .. res5?

The probing protocol of Goyal, Mahajan, Gupta, Misra, "Scaling and Benchmarking
Self-Supervised Visual Representation Learning", ICCV 2019, used by PIRL (Misra & van der
Maaten 2020, Fig. 5) to show that Jigsaw's last stage specialises to its pretext task while
PIRL's keeps improving: each stage's feature map is average-pooled to a grid chosen so that
every stage gives about ``dim`` features (their 9k; 2048 by default here, for small
models), then a linear classifier is trained on the frozen, standardised features.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import figures
from ..data import ImageDataset
from ..errors import SelfsupError
from ..models import prefers_channels_last
from ..files import read_json_record, write_json, write_text_atomic
from ..views import EvalView
from .calibrate import recalibrate_batchnorm
from .evaluator import EvalConfig
from .features import extract_features
from .linear import linear_probe


def pooled_grid(channels: int, height: int, dim: int) -> int:
    """Side g of the pooling grid so that channels * g^2 is close to ``dim`` (1 <= g <= height)."""
    return max(1, min(height, round(math.sqrt(dim / channels))))


def stage_features(backbone: nn.Module, images: torch.Tensor, view: EvalView, *, dims: tuple[int, ...] = (2048,),
                   **options: Any) -> dict[str, torch.Tensor]:
    """{"stage@dim": (N, ~dim) float32 CPU features} for every stage of ``backbone.forward_stages``
    and every pooled size in ``dims``, from one forward pass per batch."""
    if not hasattr(backbone, "forward_stages"):
        raise SelfsupError(f"{type(backbone).__name__} does not expose its stages (forward_stages); "
                           "the layer-wise probe needs a ResNet-style backbone")

    def pooled_stages(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{name}@{dim}": F.adaptive_avg_pool2d(fmap.float(), pooled_grid(fmap.shape[1], fmap.shape[-1],
                                                                                dim)).flatten(1)
                for name, fmap in backbone.forward_stages(x).items() for dim in dims}

    return extract_features(backbone, images, view, encode=pooled_stages, **options)


def probe_layers(name: str, backbone: nn.Module, train: ImageDataset, test: ImageDataset, view: EvalView,
                 cfg: EvalConfig, *, dims: tuple[int, ...] = (2048,), device: torch.device | None = None,
                 autocast_dtype: torch.dtype | None = None, recalibrate: int = 0, seed: int = 0,
                 quiet: bool = False) -> dict[int, dict[str, Any]]:
    """Linear-probe top-1 (%) of every stage of one backbone, for each pooled size:
    {dim: {stage: {"top1", "dim", "weight_decay"}}}.

    ``recalibrate`` > 0 first re-estimates the BatchNorm statistics on that many training images.
    """
    if device is not None:
        backbone.to(device)
    channels_last = prefers_channels_last(backbone)
    if recalibrate:
        recalibrate_batchnorm(backbone, train.images, view, count=recalibrate, batch_size=cfg.batch_size, seed=seed,
                              autocast_dtype=autocast_dtype, channels_last=channels_last,
                              desc=None if quiet else f"{name}: BatchNorm recalibration")
    options = dict(dims=tuple(dims), autocast_dtype=autocast_dtype, batch_size=cfg.batch_size,
                   channels_last=channels_last)
    train_features = stage_features(backbone, train.images, view, desc=None if quiet else f"{name}: train",
                                    **options)
    test_features = stage_features(backbone, test.images, view, desc=None if quiet else f"{name}: test",
                                   **options)
    results: dict[int, dict[str, Any]] = {dim: {} for dim in dims}
    for key in train_features:
        stage, dim = key.split("@")
        result = linear_probe(train_features[key], train.targets, test_features[key], test.targets,
                              len(train.classes), cfg.linear_weight_decays, solver=cfg.linear_solver,
                              max_iter=cfg.linear_max_iter, epochs=cfg.linear_epochs, seed=seed)
        results[int(dim)][stage] = {"top1": round(result["top1"], 2), "dim": train_features[key].shape[1],
                                    "weight_decay": result["weight_decay"]}
        if not quiet:
            tqdm.write(f"{name}  {stage}: top-1 {result['top1']:.2f}% ({train_features[key].shape[1]} features)")
    return results


def record_layers(out_dir: Path, name: str, results: dict[int, dict[str, Any]],
                  settings: dict[str, Any]) -> dict[str, Any]:
    """Merge into ``out_dir/layers.json``; rewrite ``layers.md`` and the charts ``layers.png`` (the
    first pooled size) and, with several sizes, ``layers-dims.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "layers.json"
    everything = read_json_record(path)
    primary = next(iter(results))
    everything[name] = {"stages": results[primary], "settings": settings,
                        "by_dim": {str(dim): {stage: r["top1"] for stage, r in stages.items()}
                                   for dim, stages in results.items()}}
    write_json(path, everything)
    write_text_atomic(out_dir / "layers.md", layers_table(everything) + "\n")
    figures.layer_probe(out_dir / "layers.png", everything)
    if any(len(entry.get("by_dim", {})) > 1 for entry in everything.values()):
        figures.layer_probe_by_size(out_dir / "layers-dims.png", everything)
    return everything


def layers_table(everything: dict[str, Any]) -> str:
    """The top-1 table, and a table by pooled size when several were probed."""
    stages = list(dict.fromkeys(s for entry in everything.values() for s in entry["stages"]))
    lines = ["| encoder | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for name, entry in everything.items():
        cells = [f"{entry['stages'][s]['top1']:.2f}" if s in entry["stages"] else "" for s in stages]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(len(entry.get("by_dim", {})) > 1 for entry in everything.values()):
        lines += ["", "| encoder | pooled size | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
        for name, entry in everything.items():
            for dim, tops in entry.get("by_dim", {}).items():
                lines.append(f"| {name} | ~{dim} | " + " | ".join(f"{tops[s]:.2f}" if s in tops else ""
                                                                 for s in stages) + " |")
    return "\n".join(lines)
