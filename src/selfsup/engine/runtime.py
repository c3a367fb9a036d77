"""Where and how a run executes: device, precision, provenance."""
from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist
from ..errors import SelfsupError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's GPU under torchrun (LOCAL_RANK), else cuda:0, else the CPU."""
    if name == "auto":
        return torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SelfsupError(f"train.device '{name}' is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SelfsupError("train.device asks for CUDA but no GPU is visible; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank())
    return device


@functools.cache
def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    return platform.machine() == "arm64" and sys.platform == "darwin"  # Apple M2+ run bf16 natively


@dataclass(frozen=True)
class Precision:
    name: str
    """bf16, fp16 or fp32."""
    dtype: torch.dtype | None
    """The autocast dtype, None for fp32."""

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 where the hardware runs it natively, fp16 + loss scaling on older GPUs, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise SelfsupError("fp16 needs a GPU; on the CPU use bf16 (fast on AVX-512 BF16/AMX CPUs) or fp32")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if name not in dtypes:
        raise SelfsupError(f"unknown precision '{name}'; choose auto, bf16, fp16 or fp32")
    return Precision(name, dtypes[name])


VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""The CPU features that decide how fast (and in which precision) a CPU trains: every measurement states them."""


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, threads and vector features (e.g. ``avx2 avx512f avx512_bf16``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in (platform.processor(), platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    features = " ".join(flag for flag in VECTOR_FLAGS if flag in flags)
    return f"{name} ({torch.get_num_threads()} threads{'; ' + features if features else ''})"


def git_revision() -> str:
    """The commit of the selfsup source tree, with ``-dirty`` when it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("selfsup", "torch", "torchvision", "kornia", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


_COMMAND: list[str] | None = None


def record_command(command: list[str] | None) -> None:
    """The command line that runs now (the CLI says which, also when called in-process), for the
    provenance of the runs it writes; None: the process's own ``sys.argv``."""
    global _COMMAND
    _COMMAND = None if command is None else list(command)


def available_memory() -> int | None:
    """Bytes of RAM the system can give without swapping (``MemAvailable``); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def speed_settings(device: torch.device) -> dict[str, bool | str]:
    """Switch on what is known to be safe and faster on ``device``, and say what it is (recorded in
    every run's ``meta.json``). On CUDA: TF32 matmuls and convolutions (10-bit mantissas inside fp32
    products, the default of most training code on Ampere and later) and cuDNN's autotuner (a run's
    input shapes do not change, so the first steps' search pays for itself). SGD and AdamW take their
    fused CUDA kernels where every parameter is on a GPU (:func:`~selfsup.engine.optim.build_optimizer`;
    LARS has none). On the CPU: the OpenMP wait policy the process started with (``OMP_WAIT_POLICY``;
    unset, torch's threads spin between parallel regions: faster steps, but they take the cores a
    stream's workers need; benchmarks/RESULTS.md, 24)."""
    if device.type != "cuda":
        return {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (spinning)")}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return {"tf32": True, "cudnn_benchmark": True}


def provenance(device: torch.device, precision: Precision, command: list[str] | None = None) -> dict:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else _COMMAND if _COMMAND is not None else sys.argv,
        "git_revision": git_revision(),
        "versions": library_versions(),
        "host": socket.gethostname(),
        "device": describe_device(device),
        "precision": precision.name,
        "world_size": dist.world_size(),
    }
