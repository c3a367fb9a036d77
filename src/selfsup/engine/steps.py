"""Small pieces of a training step the loop and the recipes share: the memory layout of views,
running a block without leaving a trace, frozen parts, DINO's per-parameter clipping, timing on a device."""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import dist
from .contracts import Batch, Freeze, Images, Precropped
from .runtime import Precision


@torch.no_grad()
def clip_each_parameter(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each parameter's gradient down to norm ``max_norm`` if it is longer (DINO's
    ``clip_gradients``: factor max_norm / (norm + 1e-6) where it is below 1); returns the global
    norm before clipping, for the log."""
    norms = torch.stack([p.grad.detach().float().norm() for p in params]) if params else torch.zeros(1)
    factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # on the device: no host sync per parameter
    for param, factor in zip(params, factors):
        param.grad.mul_(factor.to(param.grad.dtype))
    return norms.norm()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


@contextlib.contextmanager
def preserved(module: nn.Module, *others: Any) -> Iterator[None]:
    """Run a block (timing steps, say) and put back the module's state, the state of ``others``
    (optimisers, scalers: anything with ``state_dict``) and the RNG, as if it never ran."""
    saved = copy.deepcopy(module.state_dict())
    saved_others = [copy.deepcopy(o.state_dict()) for o in others]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        module.load_state_dict(saved)
        for other, state in zip(others, saved_others):
            other.load_state_dict(state)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        for param in module.parameters():
            param.grad = None


def forward_views(module: nn.Module, images: Images, targets: torch.Tensor, index: torch.Tensor, progress: float,
                  *, precision: Precision, device: torch.device, channels_last: bool,
                  model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The forward half of a training step: ``module.views`` of the uint8 ``images`` without gradient,
    in the memory layout asked, then ``model`` (``module`` itself, or its DDP wrapper) on them under
    autocast; returns its ``{"loss", ...}``. A streamed batch whose workers took no crops gives the
    views its base images."""
    if isinstance(images, Precropped) and not images.crops:
        images = images.base
    with torch.no_grad():
        views = module.views(images)
    views = to_channels_last(views) if channels_last else [v.contiguous() for v in views]
    with precision.autocast(device):
        return (model or module)(Batch(views, targets, index), progress)


def to_channels_last(views: list[torch.Tensor]) -> list[torch.Tensor]:
    # Images only: labels and tile stacks (B, T, C, h, w) keep their layout.
    return [v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 and v.is_floating_point() else v
            for v in views]


def endless(loader: Any) -> Iterator[Any]:
    """A loader's batches, epoch after epoch (a short dataset may hold fewer than the steps asked for);
    closing it ends the epoch in progress (and a stream's workers)."""
    while True:
        with contextlib.closing(loader.iterate()) as epoch:
            yield from epoch


def divergence_message(what: str, step: int, epoch: int, run_dir: Path, when: str = "at",
                       updated: bool = False) -> str:
    """What a run that diverged says: what happened, when, the last good checkpoint, what to try
    (``updated``: the weights already hold it, as when the loss stayed finite)."""
    last = run_dir / "checkpoints" / "last.pt"
    where = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    kept = (" while the loss stayed finite; the run stops without saving them, and" if updated
            else "; the weights and the optimiser were not updated with it and")
    return (f"{what} {when} step {step} (epoch {epoch}){kept} {where}. Lower optim.lr, check the data, or try "
            "train.precision=fp32; continue with --resume.")


def non_finite_state(module: nn.Module) -> str | None:
    """The name of the first weight or statistic of ``module`` holding a NaN or an infinity (None: all
    finite), with one device synchronisation when all are finite (one fused norm per tensor)."""
    state = {name: t for name, t in module.state_dict().items() if t.is_floating_point() and t.numel()}
    if not state:
        return None
    norms = torch._foreach_norm([t.float() for t in state.values()])
    if bool(torch.stack(norms).isfinite().all()):
        return None
    return next((name for name, t in state.items() if not bool(torch.isfinite(t).all())), "weights")


class FrozenParts:
    """The parameters and BatchNorm layers each :class:`~.contracts.Freeze` names, found once by name;
    iterates as ``(spec, parameters, norms)``."""

    def __init__(self, module: nn.Module, specs: tuple[Freeze, ...]) -> None:
        names = {id(p): n for n, p in module.named_parameters()}
        self.parts = [(spec, [p for p in module.parameters() if names[id(p)].startswith(spec.prefix)],
                       [m for n, m in module.named_modules() if n.startswith(spec.prefix.rstrip("."))
                        and isinstance(m, nn.modules.batchnorm._BatchNorm)]) for spec in specs]

    def __iter__(self) -> Iterator[tuple[Freeze, list[nn.Parameter], list[nn.Module]]]:
        return iter(self.parts)

    def set_norm_modes(self, step: int) -> None:
        """A frozen part's BatchNorm keeps its statistics (eval mode) until its step."""
        for spec, _, norms in self.parts:
            for norm in norms:
                norm.train(step >= spec.until_step)

    def drop_gradients(self, step: int) -> None:
        """Neither the optimiser nor weight decay moves a part before its step."""
        for spec, params, _ in self.parts:
            if step < spec.until_step:
                for param in params:
                    param.grad = None


def clip_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, limit: float,
                   per_parameter: bool) -> float:
    """Unscale the gradients and clip them to ``limit`` (their global norm, or each parameter's); the
    norm before clipping."""
    scaler.unscale_(optimizer)
    trained = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if per_parameter:
        return float(clip_each_parameter(trained, limit))
    return float(nn.utils.clip_grad_norm_(trained, limit))


def seconds_per_step(engine: Any, count: int, warmup: int = 1) -> float:
    """Seconds per training step of ``engine`` (an :class:`~.loop.Engine`), measured on real batches,
    then undone (weights, optimiser, RNG and step are as before): sizes a run to a time budget."""
    step = engine.step
    with preserved(engine.module, engine.optimizer, engine.scaler, *([engine.probe] if engine.probe is not None
                                                                      else [])), \
            contextlib.closing(endless(engine.loader)) as batches:
        for _ in range(warmup):  # also starts a stream's workers
            engine.train_step(*next(batches))
        synchronize(engine.device)
        start = time.perf_counter()
        for _ in range(count):  # fresh batches: a loader slower than the steps is counted
            engine.train_step(*next(batches))
        synchronize(engine.device)
        seconds = (time.perf_counter() - start) / count
    engine.step = step
    return float(dist.all_reduce_mean(torch.tensor(seconds)).item())
