"""MixMatch (Berthelot et al. 2019, "MixMatch: A Holistic Approach to Semi-Supervised Learning", Algorithm 1).

Label guessing: the average prediction over K = 2 weak views of each unlabelled image,
sharpened with temperature T = 0.5 (no gradient). MixUp with alpha = 0.75 of the labelled
images (one-hot targets) and the unlabelled views (guessed targets) with a shuffle of all of
them, lambda drawn per image as the official code does, lambda' = max(lambda, 1 - lambda) so
each mixed image stays closest to its own. Loss: cross-entropy with the mixed targets on the
labelled part + lambda_u * squared error on the unlabelled part; the paper's lambda_u = 75
(CIFAR-10, class-averaged) is 7.5 on our class sum, ramped up linearly over the paper's first
16,000 steps (the code: 1024 kimg at batch 64, 16,384 steps, the default here). One labelled
image per unlabelled one (mu = 1). Evaluated: the moving average of the weights (decay 0.999),
as the paper reports (``eval_ema``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...engine import Batch
from ...views import ImageInfo
from .base import Common, SemiSupervised, squared_error


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalised: a lower-entropy version of the class distribution p."""
    p = p.pow(1.0 / temperature)
    return p / p.sum(1, keepdim=True)


class MixMatch(SemiSupervised):
    weak_views = 2
    default_weight = 7.5
    default_rampup_steps = 16_384
    ramp = "linear"
    default_ratio = 1.0
    default_eval_ema = 0.999

    def __init__(self, encoder: nn.Module, num_classes: int, image: ImageInfo, common: Common = Common(), *,
                 temperature: float = 0.5, alpha: float = 0.75) -> None:
        super().__init__(encoder, num_classes, image, common)
        self.temperature, self.alpha = temperature, alpha

    @torch.no_grad()
    def guess_labels(self, views: list[torch.Tensor]) -> torch.Tensor:
        """The sharpened mean prediction over the K views of each unlabelled image (no gradient)."""
        return sharpen(torch.stack([self.classify(v).float().softmax(1) for v in views]).mean(0), self.temperature)

    def mix(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MixUp of (N, C, H, W) ``inputs`` and their (N, K) ``targets`` with a shuffle of them, lambda'
        = max(lambda, 1 - lambda) drawn per image from Beta(alpha, alpha); returns both mixed and lambda'."""
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((len(inputs),)).to(inputs.device)
        lam = torch.maximum(lam, 1.0 - lam)
        order = torch.randperm(len(inputs), device=inputs.device)
        mixed = lam.view(-1, 1, 1, 1) * inputs + (1 - lam.view(-1, 1, 1, 1)) * inputs[order]
        return mixed, lam[:, None] * targets + (1 - lam[:, None]) * targets[order], lam

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        labelled = batch.targets >= 0
        classes = self.head.out_features
        x = batch.views[0][labelled]
        x_targets = F.one_hot(batch.targets[labelled], classes).float()
        views = [v[~labelled] for v in batch.views[:self.weak_views]]
        guess = self.guess_labels(views)
        mixed, mixed_targets, lam = self.mix(torch.cat([x, *views]), torch.cat([x_targets] + [guess] * len(views)))
        logits = self.classify(mixed).float()
        n = len(x)
        supervised = -(mixed_targets[:n] * logits[:n].log_softmax(1)).sum(1).mean() if n else logits.sum() * 0.0
        unsup = squared_error(logits[n:].softmax(1), mixed_targets[n:]) if len(logits) > n else logits.sum() * 0.0
        weight = self.unlabelled_weight()
        return {"loss": supervised + weight * unsup, "loss_labelled": supervised.detach(),
                "loss_unlabelled": unsup.detach(), "unlabelled_weight": torch.tensor(weight),
                "mix_lambda": lam.mean()}
