"""Our ViT as a timm or torchvision ``VisionTransformer``.

Ours: patch conv, [CLS] + patches plus one position embedding for those 1 + N tokens, then
register tokens inserted after [CLS] (no position embedding), pre-norm blocks (LayerNorm eps
1e-6, exact GELU, MLP ratio 4, qkv with bias), final LayerNorm, output the [CLS] token (or, with
``backbone.pool: mean``, the mean of the normed patch tokens).

timm (``class_token=True, global_pool='token', no_embed_class=False``) concatenates [CLS],
registers and patches and then adds a ``pos_embed`` covering all 1 + R + N tokens: with zeros at
the register positions it computes exactly our forward. Mean pooling is timm's ``global_pool='avg'``
with ``fc_norm=False`` (the final norm on every token before the mean, as ours; timm's default for
'avg' would move it after the mean). torchvision's ViT is the same network without registers and
with the [CLS] output only (its attention packs q, k, v in one ``in_proj`` in the same order as our
qkv).
"""
from __future__ import annotations

import torch

from ..errors import SelfsupError
from ..models.vit import VIT_SIZES, VisionTransformer
from .target import Target, load_lines, python_arguments


#: Our block parameter prefixes -> timm's and torchvision's (+ "weight" / "bias"). torchvision
#: keeps q, k, v in one packed ``in_proj``, in the order and head layout of our ``qkv``.
TIMM_BLOCK = {"norm1.": "norm1.", "attn.qkv.": "attn.qkv.", "attn.proj.": "attn.proj.", "norm2.": "norm2.",
              "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."}
TORCHVISION_BLOCK = {"norm1.": "ln_1.", "attn.qkv.": "self_attention.in_proj_",
                     "attn.proj.": "self_attention.out_proj.", "norm2.": "ln_2.",
                     "mlp.0.": "mlp.0.", "mlp.2.": "mlp.3."}
TIMM_TOP = {"patch_embed.weight": "patch_embed.proj.weight", "patch_embed.bias": "patch_embed.proj.bias",
            "cls_token": "cls_token", "registers": "reg_token", "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
TORCHVISION_TOP = {"patch_embed.weight": "conv_proj.weight", "patch_embed.bias": "conv_proj.bias",
                   "cls_token": "class_token", "position": "encoder.pos_embedding",
                   "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias"}


def _rename(weights: dict[str, torch.Tensor], top: dict[str, str], block: dict[str, str], block_prefix: str
            ) -> dict[str, torch.Tensor]:
    """Every entry of our ViT's state dict under its name in the other library (a name missing from
    the maps is a KeyError: a parameter never silently left behind)."""
    out = {}
    for name, tensor in weights.items():
        if name.startswith("blocks."):
            _, index, rest = name.split(".", 2)
            ours = next(prefix for prefix in block if rest.startswith(prefix))
            name = block_prefix.format(i=index) + block[ours] + rest[len(ours):]
        else:
            name = top[name]
        out[name] = tensor.detach().contiguous()
    return out


def timm_arguments(arch: dict) -> dict:
    """Keyword arguments of ``timm.models.vision_transformer.VisionTransformer`` for ``arch``."""
    dim, depth, heads = VIT_SIZES[arch["size"]]
    return {"img_size": arch["image_size"], "patch_size": arch["patch_size"], "in_chans": arch["in_channels"],
            "num_classes": 0, "embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0,
            "qkv_bias": True, "class_token": True, "no_embed_class": False,
            **({"global_pool": "avg", "fc_norm": False} if arch.get("pool") == "mean" else {"global_pool": "token"}),
            **({"reg_tokens": arch["registers"]} if arch["registers"] else {})}


def timm_vit_recipe(arch: dict, weights_file: str) -> str:
    imports, load = load_lines(weights_file)
    return "\n".join(imports + [
        "import torch", "from timm.models.vision_transformer import VisionTransformer", "",
        f"model = VisionTransformer({python_arguments(timm_arguments(arch))})",
        f"model.load_state_dict({load})", ""])


def torchvision_arguments(arch: dict) -> dict:
    """Arguments of ``torchvision.models.VisionTransformer`` for ``arch`` (no registers)."""
    dim, depth, heads = VIT_SIZES[arch["size"]]
    return {"image_size": arch["image_size"], "patch_size": arch["patch_size"], "num_layers": depth,
            "num_heads": heads, "hidden_dim": dim, "mlp_dim": 4 * dim}


def torchvision_vit_recipe(arch: dict, weights_file: str) -> str:
    refuse_for_torchvision(arch)
    imports, load = load_lines(weights_file)
    dim, patch, channels = VIT_SIZES[arch["size"]][0], arch["patch_size"], arch["in_channels"]
    lines = imports + ["import torch", "import torchvision", "from torch import nn", "",
                       f"model = torchvision.models.VisionTransformer({python_arguments(torchvision_arguments(arch))})"]
    if channels != 3:
        lines.append(f"model.conv_proj = nn.Conv2d({channels}, {dim}, kernel_size={patch}, stride={patch})"
                     f"  # {channels}-channel images")
    lines += ["model.heads = nn.Identity()  # the encoder's features ([CLS] after the final norm)",
              f"model.load_state_dict({load})"]
    return "\n".join(lines) + "\n"


def refuse_for_torchvision(arch: dict) -> None:
    """What torchvision's VisionTransformer cannot be: with registers, or read by its patch tokens' mean."""
    if arch["registers"]:
        raise SelfsupError(f"this ViT has {arch['registers']} register tokens, which torchvision's VisionTransformer "
                           "has no place for; export it with --format timm (timm's VisionTransformer has reg_tokens)")
    if arch.get("pool") == "mean":
        raise SelfsupError("this ViT returns the mean of its patch tokens (backbone.pool: mean), and torchvision's "
                           "VisionTransformer returns only its class token; export it with --format timm "
                           "(global_pool='avg')")


def vit_target(vit: VisionTransformer, library: str) -> Target:
    """``vit`` as a timm or torchvision ``VisionTransformer`` (torchvision: without registers)."""
    arch, registers = vit.arch, vit.arch["registers"]
    weights = dict(vit.state_dict())
    if library == "timm":
        position = weights.pop("position").detach()
        out = _rename(weights, TIMM_TOP, TIMM_BLOCK, "blocks.{i}.")
        changes = ["global_pool='avg', fc_norm=False: the model returns the mean of the normed patch tokens"
                   ] if arch.get("pool") == "mean" else []
        if registers:  # timm adds pos_embed after inserting the registers; ours gives them none: zeros there
            zeros = position.new_zeros(1, registers, position.shape[-1])
            position = torch.cat([position[:, :1], zeros, position[:, 1:]], dim=1)
            changes.append(f"pos_embed holds zeros at the {registers} register positions (registers get no "
                           "position embedding)")
        out["pos_embed"] = position.contiguous()
        return Target("timm", "timm.models.vision_transformer.VisionTransformer", timm_arguments(arch), out,
                      lambda weights_file: timm_vit_recipe(arch, weights_file), changes)
    refuse_for_torchvision(arch)
    changes = ["heads = Identity: the model returns the [CLS] features"]
    if arch["in_channels"] != 3:
        changes.insert(0, f"conv_proj takes {arch['in_channels']} channels")
    return Target("torchvision", "torchvision.models.VisionTransformer", torchvision_arguments(arch),
                  _rename(weights, TORCHVISION_TOP, TORCHVISION_BLOCK, "encoder.layers.encoder_layer_{i}."),
                  lambda weights_file: torchvision_vit_recipe(arch, weights_file), changes)
