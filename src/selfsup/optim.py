"""Optimisers (SGD, LARS, AdamW), parameter groups, and schedules as pure functions."""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import SelfsupError


def cosine_schedule(step: int, total_steps: int, peak: float, final: float = 0.0,
                    warmup_steps: int = 0, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine decay to ``final``.

    Used for the learning rate (SimCLR: 10 warm-up epochs, then cosine without restarts) and,
    by later methods, for weight decay, EMA momentum and temperatures.
    """
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """SimCLR's learning-rate scaling to the global batch size (App. B.1)."""
    if rule == "linear":
        return lr * batch_size / 256
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / 256)
    return lr


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool = True) -> list[dict]:
    """Two groups: decayed weights, and norm weights + biases (no decay, no LARS adaptation)."""
    decayed, exempt = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (exempt if exclude_norm_bias and param.ndim <= 1 else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": weight_decay, "lars": True}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0, "lars": False})
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You, Gitman, Ginsburg 2017, arXiv:1708.03888).

    For each parameter of a group with ``lars=True`` the update is scaled by
    ``trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)``; groups with ``lars=False``
    (norms and biases, as in SimCLR and BYOL) get plain SGD with momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                if group["lars"]:
                    weight_norm, grad_norm = param.norm(), grad.norm()
                    trust = group["trust_coefficient"] * weight_norm / (grad_norm + group["eps"])
                    # Fresh layers (zero weights or gradients) step as plain SGD.
                    trust = torch.where((weight_norm > 0) & (grad_norm > 0), trust, torch.ones_like(trust))
                    grad = grad.mul(trust)
                state = self.state[param]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(param)
                buffer = state["momentum"]
                buffer.mul_(group["momentum"]).add_(grad)
                param.add_(buffer, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, *, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 0.0, exclude_norm_bias: bool = True,
                    betas: tuple[float, float] = (0.9, 0.999), trust_coefficient: float = 0.001
                    ) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, exclude_norm_bias)
    if not groups[0]["params"] and len(groups) == 1:
        raise SelfsupError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise SelfsupError(f"unknown optimiser '{name}'; choose sgd, lars or adamw")
