"""Every collective of the library, as functions that are no-ops in a single process.

Launch with ``torchrun --nproc_per_node N selfsup pretrain ...``: the process group is
built from torchrun's environment (env:// rendezvous), NCCL on GPUs and gloo on CPUs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str) -> None:
    """Join the process group torchrun describes; nothing happens in a single process."""
    if not launched_by_torchrun() or is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://")


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy; the input is left alone)."""
    if not is_initialized():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def gather_objects(obj: object) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects, e.g. RNG states)."""
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the gradient of its own slice.

    The backward sums the incoming gradients over ranks before slicing: every rank's loss
    depends on every rank's embeddings, and DDP later divides parameter gradients by the
    world size, so the result equals the gradient of the mean loss over the global batch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(world_size())[rank()]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) of every rank into (world_size * B, ...), keeping gradients.

    Rank r's rows are ``[r * B, (r + 1) * B)``. Every rank must pass the same B.
    """
    if not is_initialized() or world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank, without gradient (e.g. for a queue or a bank)."""
    if not is_initialized() or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def average_norm_statistics(module: torch.nn.Module) -> None:
    """Average the running statistics of every BatchNorm over ranks (no-op in one process).

    DDP here does not broadcast buffers on every forward (memory banks and queues would be
    sent along), so each rank's BatchNorm keeps statistics of its own shard; the engine calls
    this before it evaluates or writes a checkpoint, so every rank holds the same model.
    """
    if not is_initialized() or world_size() == 1:
        return
    for norm in module.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
            for buffer in (norm.running_mean, norm.running_var):
                if buffer is not None:
                    dist.all_reduce(buffer)
                    buffer.div_(world_size())


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``tensor`` of rank ``src`` on every rank (in place; returned for convenience)."""
    if is_initialized() and world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor
