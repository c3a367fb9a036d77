"""Vision Transformer with optional register tokens, and access to its attention and token norms.

Dosovitskiy et al. "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021 (arXiv:2010.11929); registers: Darcet, Oquab, Mairal, Bojanowski. "Vision
Transformers Need Registers", ICLR 2024 (arXiv:2309.16588).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelfsupError

#: What ``forward`` returns: the final [CLS] token, or the mean of the final patch tokens.
POOLINGS = ("cls", "mean")

#: (embedding dim, depth, heads) of the DeiT sizes DINO trains (Touvron et al. 2021).
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6)}


def fused_attention_is_faster(q: torch.Tensor) -> bool:
    """Whether PyTorch's fused attention kernel beats the explicit product for these queries. Not on a CPU in
    bf16: there the fused kernel took 4x (50 tokens) to 8.8x (10 tokens) the explicit product's time forward
    and backward at ViT-tiny's shapes, and 46% of a DINO-ViT step (RESULTS 33). In fp32 it was level (50
    tokens) or faster (10). GPUs keep it (not measured here): it is their flash path, which also spares
    the (tokens x tokens) maps."""
    return q.device.type != "cpu" or q.dtype != torch.bfloat16


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The explicit product's softmax maps, ``softmax(q k^T / sqrt(d))`` (DINO's ``Attention``)."""
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)


class Attention(nn.Module):
    """Multi-head self-attention; ``keep_attention`` stores the softmax maps of the last call.

    The explicit product (DINO's own ``Attention``) or the fused kernel, whichever is faster where it
    runs (:func:`fused_attention_is_faster`): the same function, to the precision's rounding."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise SelfsupError(f"ViT dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.keep_attention or not fused_attention_is_faster(q):
            weights = attention_weights(q, k)
            if self.keep_attention:  # the maps, to look at
                self.attention = weights.detach()
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) on a residual branch: in training, each sample's branch
    output is dropped with probability ``rate`` and the kept ones scaled by 1 / (1 - rate)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise SelfsupError(f"backbone.drop_path must lie in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask.div_(keep)  # the (B, 1, ...) mask scaled, not the whole branch twice


def without_drop_path(module: nn.Module) -> nn.Module:
    """``module`` with every :class:`DropPath` off (a momentum teacher's copy of a student)."""
    for layer in module.modules():
        if isinstance(layer, DropPath):
            layer.rate = 0.0
    return module


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)) with GELU, ratio 4,
    each residual branch behind a :class:`DropPath`."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT backbone: patch embedding, [CLS] + patch tokens (+ registers), pre-norm blocks.

    ``forward(x) -> (B, dim)``: with ``pool="cls"`` the final [CLS] token (DINO's representation),
    with ``pool="mean"`` the mean of the final patch tokens (after the final LayerNorm; [CLS] and
    registers left out), which MaskFeat's and MAE's classifiers read. Register tokens
    (``registers`` > 0) are learnable tokens appended after the patch embedding, without
    position embedding, that take part in attention and are dropped at the output (Darcet et al.
    2024, Sec. 3); ``tokens(x)`` returns all final tokens by kind, ``attention_maps(x)`` the
    last block's attention. ``drop_path``: stochastic depth in training (:class:`DropPath`). Images
    of another size than ``image_size`` (multi-crop's local
    crops) get the position embedding interpolated to their patch grid (bicubic, as DINO).
    Initialisation as timm/DINO: truncated normal (std 0.02) for tokens and linear layers.
    """

    prefers_channels_last = False

    def __init__(self, size: str = "tiny", image_size: int = 32, in_channels: int = 3, patch_size: int = 4,
                 registers: int = 0, drop_path: float = 0.0, pool: str = "cls") -> None:
        super().__init__()
        if size not in VIT_SIZES:
            raise SelfsupError(f"unknown ViT size '{size}'; known: {', '.join(VIT_SIZES)}")
        if patch_size < 1 or image_size % patch_size:
            raise SelfsupError(f"backbone.patch_size {patch_size} must divide the image size {image_size} "
                               f"(divisors: {', '.join(str(d) for d in range(2, image_size) if image_size % d == 0)})")
        if registers < 0:
            raise SelfsupError(f"backbone.registers must be >= 0, got {registers}")
        if pool not in POOLINGS:
            raise SelfsupError(f"backbone.pool must be one of {', '.join(POOLINGS)}, got '{pool}'")
        dim, depth, heads = VIT_SIZES[size]
        self.arch = {"size": size, "image_size": image_size, "in_channels": in_channels, "patch_size": patch_size,
                     "registers": registers}
        if pool != "cls":  # absent from the arch of [CLS] networks, as in checkpoints before the option
            self.arch["pool"] = pool
        self.pooling = pool
        self.patch_size, self.num_registers, self.num_features = patch_size, registers, dim
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        self.registers = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        # DINO's stochastic depth: the rate rises linearly from 0 at the first block to drop_path at the last.
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, drop_path=rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        for param in (self.cls_token, self.position, self.registers):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def _position_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.position
        cls, patches = self.position[:, :1], self.position[:, 1:]
        patches = patches.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    def forward_tokens(self, x: torch.Tensor, final_norm: bool = True, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + R + N, dim) final tokens: [CLS], registers, patches (before the
        final LayerNorm with ``final_norm=False``: the token norms the registers paper plots).

        ``mask`` (B, N) replaces the embeddings of the masked patches by ``mask_token`` (dim,)
        before the position embedding is added (MaskFeat, BEiT)."""
        patches = self.patch_embed(x)
        grid_h, grid_w = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)
        if mask is not None:
            patches = torch.where(mask.unsqueeze(-1), mask_token.to(patches.dtype), patches)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)
        tokens = tokens + self._position_for(grid_h, grid_w)
        if self.registers is not None:
            tokens = torch.cat([tokens[:, :1], self.registers.expand(x.shape[0], -1, -1), tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens) if final_norm else tokens

    def tokens(self, x: torch.Tensor, final_norm: bool = True) -> dict[str, torch.Tensor]:
        """{"cls": (B, dim), "registers": (B, R, dim), "patches": (B, N, dim)} after the last block."""
        out = self.forward_tokens(x, final_norm)
        r = self.num_registers
        return {"cls": out[:, 0], "registers": out[:, 1:1 + r], "patches": out[:, 1 + r:]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        if self.pooling == "mean":
            return tokens[:, 1 + self.num_registers:].mean(1)
        return tokens[:, 0]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, T) attention of the last block (T = 1 + registers + patches)."""
        return self.inspect(x)["attention"]

    @torch.no_grad()
    def inspect(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass: the last block's attention (B, heads, T, T) and the tokens before the final norm."""
        last = self.blocks[-1].attn
        last.keep_attention = True
        try:
            tokens = self.forward_tokens(x, final_norm=False)
        finally:
            last.keep_attention = False
        maps, last.attention = last.attention, None
        return {"attention": maps, "tokens": tokens}


def default_patch_size(image_size: int) -> int:
    """4 px patches up to 32 px images (7x7 or 8x8 grids), 8 up to 96 px, 16 above (ImageNet)."""
    return 4 if image_size <= 32 else 8 if image_size <= 96 else 16
