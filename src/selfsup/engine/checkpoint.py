"""Checkpoints that survive anything: atomic writes, safe loads, clear errors.

A checkpoint is a plain dict of tensors and Python literals written with ``torch.save``
to a temporary file, flushed to disk and renamed over the old one, so a ``kill -9`` at
any moment leaves either the old or the new file, never half of one. Loading uses
``torch.load(weights_only=True)``: a checkpoint cannot execute code, and a file that would
need unpickling of arbitrary objects is refused.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SelfsupError
from .. import files
from ..files import save_tensors
from .lock import lock_run_dir, unlock_run_dir

FORMAT = "selfsup-checkpoint"
VERSION = 2


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    save_tensors(state, path, "checkpoint")


def read_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors a user can act on (and no advice to unpickle)."""
    return files.read_weights_only(path, "checkpoint", "Resume from another checkpoint (best.pt, or an earlier "
                                   "copy) or start a new run directory; use checkpoints written by selfsup (or "
                                   "tensors saved with safetensors).")


def load(path: str | Path) -> dict[str, Any]:
    """Read a selfsup checkpoint (never unpickling code); raise a clear error otherwise.

    A run directory stands for its ``checkpoints/last.pt``.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.pt", path / "last.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise SelfsupError(f"checkpoint {path} does not exist")
    state = read_weights_only(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SelfsupError(f"{path} is a PyTorch file but not a selfsup checkpoint (no '{FORMAT}' marker). "
                           "To start from a torchvision ResNet's weights: selfsup import WEIGHTS --run-dir DIR.")
    if state.get("version", 0) > VERSION:
        raise SelfsupError(f"{path} was written by a newer selfsup (format {state['version']}); upgrade selfsup.")
    state["path"] = str(path)
    return state


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to: ``RUN`` for ``RUN/checkpoints/x.pt`` or ``RUN``
    itself; None for a checkpoint file lying elsewhere."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else None


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """What must agree between a checkpoint and a model for the weights to fit."""
    return {"method": config["method"], "backbone": config["backbone"]}


READOUT_KEYS = {"backbone": ("pool",)}
"""Settings that choose how a trained network is read, not what its weights are: a checkpoint can be
evaluated with another value (a ViT's [CLS] token or its patch tokens' mean), but not resumed."""


def check_compatible(state: dict[str, Any], config: dict[str, Any], readout_may_differ: bool = False) -> None:
    """Refuse a checkpoint of another architecture, naming what differs; with ``readout_may_differ``
    (reading a network, not resuming its training), :data:`READOUT_KEYS` may differ.

    A key the checkpoint's config lacks was added to selfsup after it was written (its run used
    what became the default, which ``config`` holds after resolution): not a difference."""
    saved, wanted = architecture(state["config"]), architecture(config)
    differences = []
    for section in ("method", "backbone"):
        free = READOUT_KEYS.get(section, ()) if readout_may_differ else ()
        for key in sorted(saved[section]):
            if key not in free and saved[section].get(key) != wanted[section].get(key):
                differences.append(f"{section}.{key}: checkpoint {saved[section].get(key)!r}, "
                                   f"config {wanted[section].get(key)!r}")
    if differences:
        raise SelfsupError(f"checkpoint {state['path']} was trained with another architecture ("
                           + "; ".join(differences) + "). Use the checkpoint's own config, or a new run directory.")


def load_weights(module: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that names the keys and shapes that do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong_shape = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
                   if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
            if items:
                parts.append(f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise SelfsupError(f"the weights in {source} do not fit this model ({'; '.join(parts)}). "
                           "They come from another architecture.")
    bad = first_non_finite(weights)
    if bad is not None:
        raise SelfsupError(f"{source} holds non-finite values (first: {bad}): its run diverged before it was "
                           "saved. Use an earlier checkpoint (best.pt, or a run's earlier last.pt) or train again "
                           "with a lower optim.lr")
    module.load_state_dict(weights)


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity (None: all finite)."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def submodule_weights(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a state dict under ``prefix`` (e.g. ``backbone.``), with the prefix removed."""
    prefix = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Create and check the run directory and take its lock (:mod:`~selfsup.engine.lock`: one writer
    at a time); return the checkpoint to resume from, if any."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SelfsupError(f"cannot write to run directory {run_dir}: {err.strerror or err}. "
                           "Choose a writable --run-dir.") from None
    lock_run_dir(run_dir)  # held until the run ends (unlock_run_dir) or the process does
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "eval"):  # what killed writes left; no writer runs now
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        unlock_run_dir(run_dir)
        raise SelfsupError(f"{run_dir} already holds a run (checkpoints/last.pt). Pass --resume to continue it, "
                           "or choose another --run-dir; nothing was changed.")
    return last if (resume and last.exists()) else None


def check_disk_space(run_dir: Path, model: nn.Module) -> None:
    """Refuse to start when last.pt + best.pt + a temporary copy cannot fit."""
    # The optimiser roughly doubles the weights.
    parameters = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed = 3 * 3 * parameters
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise SelfsupError(f"only {free / 2**20:.0f} MiB free in {run_dir}; checkpoints need about "
                           f"{needed / 2**20:.0f} MiB. Free space or choose another --run-dir.")
