"""What a ViT's tokens do: [CLS] attention maps and token norms, with and without registers.

Darcet, Oquab, Mairal, Bojanowski. "Vision Transformers Need Registers", ICLR 2024
(arXiv:2309.16588): ViTs trained long enough recycle a few low-information patch tokens
(often background) as global scratch space; those tokens end with norms far above the others
(Fig. 3) and show up as spikes in the attention maps (Fig. 1). Register tokens give the model
that space explicitly, and the artefacts leave the patches. ``selfsup tokens`` draws, for
each checkpoint, the [CLS] attention of the last block over the patch grid and the histogram
of output token norms (before the final LayerNorm), with the share of outlier patches.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import figures
from ..data import load_splits
from ..errors import SelfsupError
from ..models.vit import VisionTransformer
from ..recipes.evaluate import default_output_dir
from ..recipes.loading import load_encoder
from ..views import EvalView

OUTLIER_FACTOR = 2.0
"""A patch token counts as an outlier when its norm exceeds this many times the median patch norm
(the paper's ViT-L threshold, 150, is absolute; tiny models need a relative one)."""


def token_statistics(backbone: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """For normalised images (N, C, H, W): the last block's [CLS] attention over the patch grid
    (N, g_h, g_w, mean over heads), the norms of patch and register tokens before the final
    norm, and the share of outlier patches."""
    if not isinstance(backbone, VisionTransformer):
        raise SelfsupError(f"token maps need a ViT backbone (vit_tiny, vit_small); this one is "
                           f"{type(backbone).__name__}")
    backbone.eval()
    seen = backbone.inspect(images)
    registers = backbone.num_registers
    grid_h, grid_w = images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size
    cls_to_patches = seen["attention"][:, :, 0, 1 + registers:].mean(1).reshape(len(images), grid_h, grid_w)
    norms = seen["tokens"].norm(dim=-1)
    patch_norms = norms[:, 1 + registers:].flatten()
    median = patch_norms.median()
    return {"attention": cls_to_patches, "patch_norms": patch_norms,
            "register_norms": norms[:, 1:1 + registers].flatten(), "cls_norm": norms[:, 0].mean().item(),
            "median_patch_norm": median.item(), "outlier_share": (patch_norms > OUTLIER_FACTOR * median).float().mean().item(), "registers": registers}


def plot_tokens(results: dict[str, dict[str, Any]], shown: torch.Tensor, out_dir: Path) -> dict[str, Path]:
    """``attention.png`` (a row per checkpoint: the [CLS] attention over each image),
    ``token-norms.png`` (histograms of patch and register norms) and ``tokens.json``.

    ``shown``: the images as uint8 (N, C, H, W), for display."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = shown.permute(0, 2, 3, 1).float().div(255).numpy()
    maps = {name: F.interpolate(entry["attention"][:, None], size=shown.shape[-2:], mode="nearest")[:, 0].numpy()
            for name, entry in results.items()}
    paths = {"attention": figures.token_attention(out_dir / "attention.png", pictures, maps),
             "norms": figures.token_norms(out_dir / "token-norms.png", results, OUTLIER_FACTOR),
             "json": out_dir / "tokens.json"}
    summary = {name: {key: entry[key] for key in ("registers", "cls_norm", "median_patch_norm", "outlier_share")}
               | {"max_patch_norm": entry["patch_norms"].max().item()} for name, entry in results.items()}
    paths["json"].write_text(json.dumps(summary, indent=2))
    return paths


def tokens_for_checkpoints(paths: list[str], overrides: list[str] = (), out_dir: Path | None = None,
                           count: int = 8, quiet: bool = False) -> tuple[dict[str, Path], dict[str, Any]]:
    """``selfsup tokens``: [CLS] attention maps and token norms of ViT checkpoints on the first
    ``count`` test images (the same images for all), one figure each with a row per checkpoint."""
    if count < 1:
        raise SelfsupError(f"--images must be at least 1, got {count}")
    results: dict[str, Any] = {}
    shown = None
    for path in paths:
        encoder, config, meta = load_encoder(path, overrides)
        if shown is None:
            shown = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet).test.images[:count]
        images = EvalView.of(meta.data)(shown)
        name = f"{config.method_name}, {getattr(encoder, 'num_registers', 0)} registers (step {meta.step})"
        if name in results:
            name = f"{name} [{meta.path.parent.parent.name}]"
        results[name] = token_statistics(encoder, images)
    paths_out = plot_tokens(results, shown, out_dir or default_output_dir(Path(paths[0])) / "tokens")
    return paths_out, results
