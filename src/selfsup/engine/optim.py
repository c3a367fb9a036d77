"""Optimisers (SGD, LARS, AdamW), parameter groups with their own scales, and schedules as
pure functions of the step."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from ..arguments import Fraction, NonNegative, Positive, Range
from ..errors import SelfsupError, closest


@dataclass
class OptimConfig:
    """The optimiser and its schedules (the ``optim`` section of a run config)."""

    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: Positive = 0.3
    """Peak learning rate for a batch of 256; scaled by ``lr_scaling`` to the global batch size."""
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """SimCLR's rules: lr * B / 256 (linear) or lr * sqrt(B / 256); none keeps lr as given."""
    min_lr: Fraction = 0.0
    """Learning rate at the end of the cosine schedule, as a fraction of the peak."""
    warmup_epochs: NonNegative = 1.0
    momentum: Annotated[float, Range(0, 1, open_high=True)] = 0.9
    nesterov: bool = False
    weight_decay: NonNegative = 1e-6
    weight_decay_end: NonNegative | None = None
    """Cosine schedule of the weight decay from ``weight_decay`` to this value (DINO: 0.04 -> 0.4);
    None keeps it constant."""
    exclude_norm_bias: bool = True
    """No weight decay (and no LARS adaptation) for norm weights and biases."""
    exempt_lr_scale: Positive = 1.0
    """The learning rate of the parameters ``exclude_norm_bias`` exempts (norm weights and biases) as a
    fraction of the others': Barlow Twins trains them at 0.0048 against the weights' 0.2 (0.024, the
    paper's and its official code's); 1 keeps one rate for all (SimCLR, BYOL)."""
    lr_scales: dict[str, NonNegative] = field(default_factory=dict)
    """Learning-rate multipliers by parameter group (``backbone``, ``heads``, or a method's own
    groups), e.g. ``{backbone: 0.1}`` trains the trunk at a tenth of the heads' rate."""
    clip_grad: Positive | None = None
    """Clip gradients to this norm (None: no clipping), as ``clip_mode`` says."""
    clip_mode: Literal["global", "per_parameter"] = "global"
    """global: the norm of all gradients together (``clip_grad_norm_``); per_parameter: each
    parameter's gradient on its own, as DINO's ``clip_gradients`` does."""
    freeze: dict[str, NonNegative] = field(default_factory=dict)
    """Parameter-name prefixes that do not train for the first N epochs, e.g. ``{backbone: 1}``
    (warm up the heads on a frozen trunk, then train jointly)."""
    betas: tuple[Annotated[float, Range(0, 1, open_high=True)], Annotated[float, Range(0, 1, open_high=True)]] = (0.9, 0.999)
    """AdamW only."""
    trust_coefficient: Positive = 0.001
    """LARS only (You et al. 2017)."""


def cosine_schedule(step: int, total_steps: int, peak: float, final: float = 0.0,
                    warmup_steps: int = 0, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine decay to ``final``.

    Used for the learning rate (SimCLR: 10 warm-up epochs, then cosine without restarts), the
    weight decay, EMA momentum and temperatures.
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


@dataclass(frozen=True)
class Schedule:
    """Learning rate and weight decay at every step of a fit: pure functions, logged each step."""

    total_steps: int
    peak_lr: float
    warmup_steps: int = 0
    final_lr: float = 0.0
    weight_decay: float = 0.0
    final_weight_decay: float | None = None

    @classmethod
    def from_config(cls, cfg: OptimConfig, total_steps: int, steps_per_epoch: int, batch_size: int) -> Schedule:
        peak = scaled_lr(cfg.lr, batch_size, cfg.lr_scaling)
        return cls(total_steps, peak, min(total_steps, round(cfg.warmup_epochs * steps_per_epoch)),
                   cfg.min_lr * peak, cfg.weight_decay, cfg.weight_decay_end)

    def lr(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.peak_lr, self.final_lr, self.warmup_steps)

    def weight_decay_at(self, step: int) -> float:
        if self.final_weight_decay is None:
            return self.weight_decay
        return cosine_schedule(step, self.total_steps, self.weight_decay, self.final_weight_decay)


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float,
                   peak_lr: float | None = None) -> None:
    """Every group at its own scale of the scheduled values; groups with ``fixed_lr`` stay at
    (their scale of) ``peak_lr`` throughout (SimSiam's predictor)."""
    for group in optimizer.param_groups:
        base = peak_lr if group.get("fixed_lr") and peak_lr is not None else lr
        group["lr"] = base * group.get("lr_scale", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_scale", 1.0)


def default_param_groups(module: nn.Module) -> list[dict]:
    """``backbone`` and ``heads`` (everything else): the groups every method has."""
    backbone = getattr(module, "backbone", None)
    owned = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    trunk = [p for p in module.parameters() if id(p) in owned]
    heads = [p for p in module.parameters() if id(p) not in owned]
    return [group for group in ({"name": "backbone", "params": trunk}, {"name": "heads", "params": heads})
            if group["params"]]


def split_groups(groups: Iterable[dict], lr_scales: dict[str, float], exclude_norm_bias: bool = True,
                 exempt_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser groups from named groups: each split into decayed weights and exempt norms and
    biases (no decay, no LARS adaptation, ``exempt_lr_scale`` times the rate), with its learning-rate scale.

    Group dicts may carry ``lr_scale`` (a method's own choice, multiplied by ``lr_scales[name]``)
    and ``fixed_lr`` (no warm-up or decay: the peak rate throughout).
    """
    groups = list(groups)
    names = [g["name"] for g in groups]
    for name in lr_scales:
        if name not in names:
            raise SelfsupError(f"optim.lr_scales: no parameter group '{name}'{closest(name, names)}; "
                               f"this model's groups: {', '.join(names)}")
    if exempt_lr_scale != 1.0 and not exclude_norm_bias:
        raise SelfsupError(f"optim.exempt_lr_scale={exempt_lr_scale:g} scales the norms' and biases' rate, which "
                           "optim.exclude_norm_bias=false gives no group of their own; set it to true or the scale to 1")
    out = []
    for group in groups:
        scale = group.get("lr_scale", 1.0) * lr_scales.get(group["name"], 1.0)
        params = [p for p in group["params"] if p.requires_grad]
        decayed = [p for p in params if not (exclude_norm_bias and p.ndim <= 1)]
        exempt = [p for p in params if exclude_norm_bias and p.ndim <= 1]
        for subset, decays in ((decayed, True), (exempt, False)):
            if subset:
                out.append({"params": subset, "name": group["name"],
                            "lr_scale": scale * (1.0 if decays else exempt_lr_scale),
                            "wd_scale": 1.0 if decays else 0.0, "lars": decays,
                            "fixed_lr": bool(group.get("fixed_lr", False))})
    return out


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You, Gitman, Ginsburg 2017, arXiv:1708.03888).

    For each parameter of a group with ``lars=True`` the update g + weight_decay * w is scaled by
    ``trust_coefficient * ||w|| / ||g + weight_decay * w||``: the form SimCLR's and BYOL's code
    use (You et al. write ||w|| / (||g|| + weight_decay ||w||)). Groups with ``lars=False``
    (norms and biases, as in SimCLR and BYOL) get plain SGD with momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,  # noqa: ANN001
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


def build_optimizer(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over named parameter groups (see :func:`split_groups`)."""
    split = split_groups(groups, cfg.lr_scales, cfg.exclude_norm_bias, cfg.exempt_lr_scale)
    if not split:
        raise SelfsupError("the model has no trainable parameters")
    for group in split:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = cfg.weight_decay * group["wd_scale"]
    # One fused kernel for every parameter on a GPU; on the CPU the default (foreach) is the faster.
    fused = {"fused": True} if all(p.is_cuda for group in split for p in group["params"]) else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(split, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.name == "lars":
        return LARS(split, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.name == "adamw":
        return torch.optim.AdamW(split, lr=lr, betas=cfg.betas, **fused)
    raise SelfsupError(f"unknown optimiser '{cfg.name}'; choose sgd, lars or adamw")
