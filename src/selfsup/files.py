"""Files written whole or not at all, and side files read back as caches.

Every file a command writes for later commands to read (checkpoints, ``features.pt``,
``clusters.pt``, ``results.json``, ``meta.json``, ``config.yaml``) is written to a temporary
name beside it, flushed to disk and renamed over the old one, so that a kill or a full disk
leaves the old file or the new one, never half of one. A side file that is a cache of work
that can be done again (features, clusters) and turns out damaged anyway (written by another
tool, cut by a copy) is recomputed, and the run says so.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import SelfsupError

TEMPORARY = ".{name}.{pid}.tmp"
"""The name a file is written under before its rename (the leftovers of killed writes match ``.*.tmp``)."""


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None], what: str = "file") -> None:
    """``write(handle)`` into a temporary file beside ``path``, made durable, then renamed to ``path``.
    The new file gets the permissions the user's umask gives, as a plain ``open`` would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(TEMPORARY.format(name=path.name, pid=os.getpid()))
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as err:  # a full disk, a failing writer, Ctrl-C: never a half file left behind
        temporary.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise SelfsupError(f"could not write {what} {path}: {err.strerror or err}. Free disk space or choose "
                               f"another destination; the previous {what} is intact (if there was one).") from None
        raise
    with contextlib.suppress(OSError):  # the rename made durable, where the file system lets a folder be synced
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as indented JSON (what JSON cannot hold written as its ``str``), atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def save_tensors(payload: dict[str, Any], path: str | Path, what: str = "file") -> None:
    write_atomic(path, lambda handle: torch.save(payload, handle), what)


def set_aside(path: Path, reason: str, then: str) -> None:
    """Rename a damaged side file to ``<name>.damaged-<time>`` (kept for a look, never read again) and say so."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    print(f"warning: {path} was damaged ({reason}); kept as {aside.name}, {then}", file=sys.stderr)


def load_cached_tensors(path: Path) -> dict[str, Any] | None:
    """A cache file written by :func:`save_tensors`, or None when there is none or it is damaged (then it
    is set aside, and the caller computes it again)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:  # not damage: the user's to fix
        raise
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as err:  # cut, random bytes, a pickle
        set_aside(path, str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__,
                  "computing it again")
        return None
    if not isinstance(payload, dict):
        set_aside(path, "not a mapping of tensors", "computing it again")
        return None
    return payload


def read_json_record(path: Path) -> dict[str, Any]:
    """A JSON record that later commands add to (``results.json``, ``layers.json``): {} when there is
    none; a damaged one is set aside and a new record started."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        set_aside(path, str(err).splitlines()[0][:120], "starting a new one")
        return {}
    if not isinstance(record, dict):
        set_aside(path, "not a JSON object", "starting a new one")
        return {}
    return record


def read_weights_only(path: Path, what: str, advice: str) -> Any:
    """``torch.load(path, weights_only=True)``: nothing in the file can run code. A file that holds
    pickled objects is refused as such, anything else unreadable as not a ``what``; both messages say
    the file was left untouched and end with ``advice``, never with PyTorch's advice to unpickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncation, a bad zip, random bytes, a pickle: each said below
        text = str(err)
        found = re.search(r"GLOBAL:? ?([\w.]+)", text)
        if isinstance(err, pickle.UnpicklingError) and found:
            raise SelfsupError(
                f"{path} is not a weights-only {what}: it holds pickled Python objects ({found.group(1)}), which "
                f"can run code when they are unpickled, so it may be unsafe to load and selfsup refuses it. It was "
                f"left untouched. {advice}") from None
        raise SelfsupError(f"{path} is not a readable {what} ({unpickling_reason(text) or type(err).__name__}). "
                           f"It is corrupt, truncated, or another kind of file; it was left untouched. "
                           f"{advice}") from None


def unpickling_reason(message: str) -> str:
    """The line of a ``torch.load`` error that says what is wrong, without PyTorch's advice to retry with
    ``weights_only=False`` (which would run whatever the file holds)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line and "Weights only load failed" not in line
              and "Please file an issue" not in line and "documentation of torch.load" not in line]
    return (useful[0] if useful else "")[:200]


def user_file_mode() -> int:
    """The permissions a plain ``open`` gives a new file under the user's umask (0o644 under 022)."""
    try:  # read, not set and reset: setting it would race with other threads creating files
        status = Path("/proc/self/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask
