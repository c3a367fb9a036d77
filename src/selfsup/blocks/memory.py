"""A memory bank: one L2-normalised feature per training image, and NCE against it.

Wu, Xiong, Yu, Lin. "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018 (arXiv:1805.01978), Sec. 3.2-3.3; used the same way by PIRL
(Misra & van der Maaten, CVPR 2020) and Decoupled RotNet (Feng et al., CVPR 2019).

Entries are addressed by dataset index and updated with a moving average,
m_i <- normalise(momentum * m_i + (1 - momentum) * f_i) (momentum 0.5 in both papers).
Negatives are drawn uniformly from an explicit generator whose state is part of the
module's state dict, so a resumed run draws the negatives it would have drawn. Under DDP
every rank holds the whole bank and applies the updates of all ranks (gathered), so the
copies never diverge. Memory: size x dim x 4 bytes (60k x 128: 31 MB).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import dist
from ..losses import nce_loss


class MemoryBank(nn.Module):
    """``size`` x ``dim`` unit vectors with momentum updates, negative sampling and NCE.

    Defaults from NPID: 4096 noise samples, temperature 0.07, momentum 0.5. The NCE
    normalising constant Z is the Monte-Carlo estimate N * mean(exp(s)) over the noise
    samples. NPID takes it once, on the first batch, and holds it fixed
    (``normalizer="fixed"``); while the bank still holds its random initial vectors that
    estimate is far too small and the loss swings by tens of nats in the first steps, so the
    default re-estimates it on every batch (``"batch"``, no gradient through it). It is a
    buffer either way, so it survives checkpoints.

    Where the references differ (VISSL, lemniscate): they estimate Z once with the positive
    included, and draw K negatives per sample; here one set of K negatives (without the
    sample's own entry) is shared by the batch. Both estimates are unbiased; ours has more
    variance per step and costs one (K, dim) gather instead of B of them.
    """

    def __init__(self, size: int, dim: int, *, momentum: float = 0.5, num_negatives: int = 4096,
                 temperature: float = 0.07, normalizer: Literal["fixed", "batch"] = "batch", seed: int = 0) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"a memory bank needs at least 2 entries, got {size}")
        self.size, self.dim = size, dim
        self.momentum, self.temperature = momentum, temperature
        self.num_negatives = min(num_negatives, size)
        if normalizer not in ("fixed", "batch"):
            raise ValueError(f"normalizer must be 'fixed' or 'batch', got {normalizer!r}")
        self.normalizer = normalizer
        self.generator = torch.Generator().manual_seed(seed)
        # NPID's initialisation: uniform in [-a, a], a = 1 / sqrt(dim / 3), then normalised.
        bound = 1.0 / math.sqrt(dim / 3)
        init = torch.rand(size, dim, generator=self.generator) * 2 * bound - bound
        self.register_buffer("bank", F.normalize(init, dim=1))
        self.register_buffer("log_z", torch.tensor(float("nan")))

    def sample_negatives(self) -> torch.Tensor:
        """(K,) entry indices drawn uniformly with replacement, shared by the whole batch."""
        return torch.randint(self.size, (self.num_negatives,), generator=self.generator).to(self.bank.device)

    def nce(self, features: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """NCE of L2-normalised ``features`` (B, dim) against their entries ``bank[index]``,
        with the entries ``negatives`` (K,) as noise; a sample's own entry never counts as noise."""
        features = features.float()
        positive = (features * self.bank[index]).sum(1) / self.temperature
        negative = features @ self.bank[negatives].T / self.temperature
        # Drawing its own entry as noise would push a sample away from itself: drop those terms
        # (log(1 - h) -> 0 as the logit -> -inf).
        negative = negative.masked_fill(negatives[None, :] == index[:, None], float("-inf"))
        if self.normalizer == "batch" or torch.isnan(self.log_z):
            with torch.no_grad():
                finite = negative[torch.isfinite(negative)]
                log_mean_exp = torch.logsumexp(finite, 0) - math.log(finite.numel())
                # Every rank must hold the same constant: average the estimates.
                self.log_z.copy_(dist.all_reduce_mean(log_mean_exp + math.log(self.size)))
        return nce_loss(positive, negative, self.size, self.log_z)

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """Moving-average update of the entries of ``index`` (from every rank) with ``features``."""
        index, features = dist.gather(index), dist.gather(features.detach().float())
        mixed = self.momentum * self.bank[index] + (1 - self.momentum) * features
        self.bank.index_copy_(0, index, F.normalize(mixed, dim=1))

    def get_extra_state(self) -> Any:
        return self.generator.get_state()  # a uint8 tensor: checkpoints stay weights-only

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state)

    def extra_repr(self) -> str:
        return (f"size={self.size}, dim={self.dim}, momentum={self.momentum}, "
                f"num_negatives={self.num_negatives}, temperature={self.temperature}")
