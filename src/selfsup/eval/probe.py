"""The online linear probe: a classifier trained during pretraining on the network's frozen features.

What solo-learn reports as its headline number and what lightly and stable-pretraining use to
watch a run: a linear classifier on detached backbone features of labelled training images,
with its own optimiser, no gradient into the backbone, its held-out top-1 logged every epoch.
Here it reads the network evaluation reads (DINO's teacher, the other methods' backbone) in
evaluation mode, on the un-augmented images of a share of each batch (``fraction``, 1/8 by
default) in a forward pass of its own: it works alike for every method (tile and patch
methods too), leaves the run's weights, BatchNorm statistics and random streams untouched
(the pretraining is the same with and without it), and costs a small share of a step
(``benchmarks/online_probe.py`` measures it). As MAE's linear probe (He et al. 2022), a
BatchNorm without affine parameters standardises the features first, so the classifier's
rate suits features whose scale changes as the network trains. SGD at 0.1 with momentum 0.9,
constant, no weight decay (stable-pretraining's defaults, without LARS).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset
from ..engine import dist
from ..views import EvalView


@contextlib.contextmanager
def evaluation_mode(network: nn.Module) -> Iterator[None]:
    """``network`` in evaluation mode for a block, then every submodule back in the mode it had."""
    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class OnlineProbe:
    """Linear classifier on ``network``'s detached features, trained by :meth:`step` on a share of
    each training batch and measured by :meth:`evaluate` on ``queries`` (images the run never
    trains on). ``state_dict`` / ``load_state_dict`` make it part of a checkpoint."""

    def __init__(self, network: nn.Module, num_features: int, num_classes: int, view: EvalView,
                 queries: ImageDataset, *, fraction: float = 0.125, lr: float = 0.1, device: torch.device,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False, batch_size: int = 512) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"the probe's share of a batch must lie in (0, 1], got {fraction}")
        self.network, self.view, self.queries, self.fraction = network, view.to(device), queries, fraction
        self.device, self.autocast_dtype, self.channels_last, self.batch_size = (device, autocast_dtype, channels_last,
                                                                                batch_size)
        self.head = nn.Sequential(nn.BatchNorm1d(num_features, affine=False), nn.Linear(num_features, num_classes))
        self.head.to(device)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> (B, D) fp32 features of the network in evaluation mode."""
        x = self.view(images.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with evaluation_mode(self.network), autocast:
            return self.network(x).float()

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """One SGD step of the classifier on the first labelled ``fraction`` of a training batch.

        Every process takes part in the gradient's all-reduce, also one whose batch holds fewer
        than two labelled images (mostly unlabelled data, STL-10's): it adds a zero gradient and no
        weight, and when no process has enough, no process steps."""
        labelled = (targets >= 0).nonzero().squeeze(1)
        count = min(len(labelled), max(2, round(self.fraction * len(images))))
        count = count if count >= 2 else 0  # BatchNorm needs two samples
        self.optimizer.zero_grad(set_to_none=False)
        logged: dict[str, float] = {}
        if count:
            chosen = labelled[:count]
            features = self.features(images[chosen])
            labels = targets[chosen].to(self.device)
            self.head.train()
            logits = self.head(features)
            loss = F.cross_entropy(logits, labels)
            (loss * count).backward()  # summed over processes below, then divided by all their samples
            logged = {"probe_loss": loss.item(), "probe_accuracy": (logits.argmax(1) == labels).float().mean().item()}
        grads = [param.grad if param.grad is not None else torch.zeros_like(param) for param in self.head.parameters()]
        total = dist.all_reduce_mean(torch.tensor(float(count), device=self.device))
        if total.item() == 0:
            return logged
        for param, grad in zip(self.head.parameters(), grads):  # one classifier on every process
            param.grad = dist.all_reduce_mean(grad) / total
        self.optimizer.step()
        return logged

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1 (%) of the classifier on the queries (computed on the main process and shared)."""
        dist.average_norm_statistics(self.head)  # each process's BatchNorm saw its own batches
        accuracy = None
        if dist.is_main():
            self.head.eval()
            correct = 0
            for start in range(0, len(self.queries), self.batch_size):
                images = self.queries.images[start:start + self.batch_size]
                labels = self.queries.targets[start:start + self.batch_size].to(self.device)
                correct += (self.head(self.features(images)).argmax(1) == labels).sum().item()
            accuracy = round(100.0 * correct / max(len(self.queries), 1), 2)
        return {"probe_top1": dist.broadcast_object(accuracy)}

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
