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

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..errors import SelfsupError  # noqa: E402
from ..models.vit import VisionTransformer  # noqa: E402

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
            "register_norms": norms[:, 1:1 + registers].flatten(), "cls_norm": norms[:, 0].mean().item(), "median_patch_norm": median.item(),
            "outlier_share": (patch_norms > OUTLIER_FACTOR * median).float().mean().item(), "registers": registers}


def plot_tokens(results: dict[str, dict[str, Any]], shown: torch.Tensor, out_dir: Path) -> dict[str, Path]:
    """``attention.png`` (a row per checkpoint: the [CLS] attention over each image),
    ``token-norms.png`` (histograms of patch and register norms) and ``tokens.json``.

    ``shown``: the images as uint8 (N, C, H, W), for display."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    count = shown.shape[0]
    figure, axes = plt.subplots(len(names) + 1, count, figsize=(1.6 * count, 1.7 * (len(names) + 1)), dpi=120,
                                squeeze=False)
    pictures = shown.permute(0, 2, 3, 1).float().div(255)
    for column in range(count):
        axes[0][column].imshow(pictures[column].squeeze(-1).numpy(), cmap="gray" if shown.shape[1] == 1 else None)
        for row, name in enumerate(names, start=1):
            heat = results[name]["attention"][column][None, None]
            heat = F.interpolate(heat, size=shown.shape[-2:], mode="nearest")[0, 0]
            axes[row][column].imshow(heat.numpy(), cmap="inferno")
    for row, name in enumerate(["image"] + names):
        axes[row][0].set_ylabel(name, fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("[CLS] attention of the last block (mean over heads)", fontsize=9)
    figure.tight_layout()
    paths = {"attention": out_dir / "attention.png", "norms": out_dir / "token-norms.png",
             "json": out_dir / "tokens.json"}
    figure.savefig(paths["attention"])
    plt.close(figure)

    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), dpi=120, squeeze=False)
    for axis, name in zip(axes[0], names):
        entry = results[name]
        axis.hist(entry["patch_norms"].numpy(), bins=50, alpha=0.8, label="patch tokens")
        if entry["registers"]:
            axis.hist(entry["register_norms"].numpy(), bins=20, alpha=0.8, label="registers")
        axis.axvline(OUTLIER_FACTOR * entry["median_patch_norm"], color="k", linestyle="--", linewidth=0.8,
                     label=f"{OUTLIER_FACTOR:g} x median")
        axis.set_yscale("log")
        axis.set_xlabel("token norm (before the final LayerNorm)")
        axis.set_title(f"{name}\noutliers {100 * entry['outlier_share']:.2f}% of patches", fontsize=8)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths["norms"])
    plt.close(figure)

    summary = {name: {key: entry[key] for key in ("registers", "cls_norm", "median_patch_norm", "outlier_share")}
               | {"max_patch_norm": entry["patch_norms"].max().item()} for name, entry in results.items()}
    paths["json"].write_text(json.dumps(summary, indent=2))
    return paths
