"""The memory layout a run trains in (channels_last or NCHW), decided once.

GPUs and bf16 CPUs run convolutions fastest in channels_last (measured, see benchmarks/RESULTS.md);
on CPUs running fp32 it depends on the CPU and the model, so both layouts are timed on a few
forward and backward passes of a real batch. The two layouts compute in different orders, so
their weights differ in the last bits: a timing that flipped between two runs of one seed would
make them differ. The decision is therefore kept: in the run's checkpoints (a resumed run
reuses it) and per machine and model in ``layouts.json`` of the cache folder (a later run of the
same model on the same machine reuses it; delete the file to measure again).

One exception comes first: on the CPU, oneDNN computes the weight gradient of a strided 1x1
convolution with fewer input channels than its channel block (8 on AVX2, 16 on AVX-512) wrongly
in channels_last: it writes past its workspace, and the run hangs, crashes or trains on wrong
gradients (uxlfoundation/oneDNN#6035, open; torch 2.14.1 bundles oneDNN 3.12: a ResNet of
width 4 hung on a 2-core AVX2 CPU, one thread crashed). Such models train in NCHW on the CPU.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..data.cache import default_cache_root
from ..engine import Images, Precision, dist, preserved
from ..files import write_text_atomic
from ..engine.runtime import describe_device
from ..engine.steps import forward_views, synchronize
from ..errors import SelfsupError
from ..models import prefers_channels_last, trunk_of

MEMO = "layouts.json"
#: The widest channel block of oneDNN's x64 1x1 convolutions (AVX-512's; AVX2's is 8): a strided one
#: with fewer input channels gets its weight gradient wrong in channels_last (oneDNN#6035).
ONEDNN_CHANNEL_BLOCK = 16
ONEDNN_ISSUE = "https://github.com/uxlfoundation/oneDNN/issues/6035"


def choose_channels_last(config: RunConfig, method: nn.Module, first_batch: Callable[[], Images],
                         device: torch.device, precision: Precision, quiet: bool, kept: bool | None = None) -> bool:
    """``train.channels_last`` or, when None, the layout a resumed run ``kept``, else the faster
    layout for this model on this machine (``first_batch()`` is asked for only when the layouts
    are timed); never channels_last where oneDNN's CPU weight gradient would be wrong in it."""
    hazards = channels_last_hazards(method) if device.type == "cpu" else []
    if config.train.channels_last is not None:
        if config.train.channels_last and hazards:
            raise SelfsupError(f"train.channels_last=true cannot train this model on the CPU: {describe(hazards)}, "
                               f"and oneDNN computes their weight gradient wrongly in channels_last (it hangs, crashes or "
                               f"corrupts memory: {ONEDNN_ISSUE}); set train.channels_last=false or leave it unset "
                               f"(NCHW is then chosen), or widen the backbone to at least {ONEDNN_CHANNEL_BLOCK} channels")
        return config.train.channels_last
    if not prefers_channels_last(method):
        return False
    if hazards:
        if dist.is_main() and not quiet:
            print(f"memory layout: NCHW ({describe(hazards)}: oneDNN computes their weight gradient wrongly in "
                  f"channels_last on the CPU, {ONEDNN_ISSUE})")
        return False
    if kept is not None:
        return kept
    if device.type == "cuda" or precision.dtype is not None:
        return True
    memo, key = default_cache_root() / MEMO, layout_key(config, method, device)
    known = read_memo(memo).get(key) if dist.is_main() else None
    if dist.broadcast_object(known) is not None:
        if dist.is_main() and not quiet:
            print(f"memory layout: {'channels_last' if known else 'NCHW'} (measured for this model on this machine "
                  f"before, kept in {memo}: delete it to measure again)")
        return bool(known)
    timings, images = {}, first_batch()
    for layout in (True, False, True, False):  # interleaved: drift hits both alike
        seconds = time_forward_backward(method, images, device, precision, layout)
        timings[layout] = min(timings.get(layout, float("inf")), seconds)
    choice = bool(dist.broadcast_object(timings[True] <= timings[False]))
    if dist.is_main():
        remember(memo, key, choice)
        if not quiet:
            print(f"memory layout: channels_last {timings[True]:.2f} s/step, NCHW {timings[False]:.2f} s/step "
                  f"(fp32 on this CPU) -> {'channels_last' if choice else 'NCHW'}")
    return choice


def channels_last_hazards(method: nn.Module) -> list[str]:
    """The convolutions of ``method`` whose weight gradient oneDNN gets wrong in channels_last on
    the CPU: 1x1, strided, fewer input channels than :data:`ONEDNN_CHANNEL_BLOCK`."""
    return [name for name, module in method.named_modules()
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
            and module.in_channels < ONEDNN_CHANNEL_BLOCK]


def describe(hazards: list[str]) -> str:
    if len(hazards) == 1:
        return f"the strided 1x1 convolution {hazards[0]} has fewer than {ONEDNN_CHANNEL_BLOCK} input channels"
    return (f"{len(hazards)} strided 1x1 convolutions ({hazards[0]}, ...) have fewer than {ONEDNN_CHANNEL_BLOCK} "
            f"input channels")


def layout_key(config: RunConfig, method: nn.Module, device: torch.device) -> str:
    """What the faster layout depends on: the machine, the library versions, the model and the batch."""
    return json.dumps([describe_device(device), torch.__version__, config.method_name, trunk_of(method).arch,
                       config.data.image_size, config.train.batch_size // dist.world_size()], default=str)


def read_memo(path: Path) -> dict[str, bool]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: a cache, measured again
        return {}
    return memo if isinstance(memo, dict) else {}


def remember(path: Path, key: str, choice: bool) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({**read_memo(path), key: choice}, indent=1) + "\n")
    except (OSError, SelfsupError):  # a read-only home or a full disk: the run goes on, the next one measures again
        pass


def time_forward_backward(method: nn.Module, images: torch.Tensor, device: torch.device, precision: Precision,
                          channels_last: bool) -> float:
    """Seconds of one forward and backward pass of ``method`` on ``images`` in the given layout; the
    method's weights, buffers and the RNG are left as they were."""
    method.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    index = torch.arange(len(images), device=images.device)
    targets = torch.full_like(index, -1)
    with preserved(method):
        start = time.perf_counter()
        loss = forward_views(method, images, targets, index, 0.0, precision=precision, device=device,
                             channels_last=channels_last)["loss"]
        loss.backward()
        synchronize(device)
        return time.perf_counter() - start
