"""One writer per run directory: an operating-system lock held for the life of the run.

A POSIX record lock (``fcntl.lockf``) on ``RUN/.selfsup.lock``: the kernel releases it when the
process exits, however it exits (a ``kill -9`` leaves no stale lock to clean up), and, unlike
``flock``, forked children (DataLoader workers, still shutting down after their parent was killed)
do not hold it. Only the main process of a torchrun job takes it, so the ranks of one job are one
writer. (A POSIX lock also ends when its process closes any descriptor of the file: nothing but
this module opens it.) The file holds the holder's PID and command, for
the message the next process gets.
"""
from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import SelfsupError

LOCK_FILE = ".selfsup.lock"
_held: dict[Path, tuple[int, int]] = {}  # run directory -> (file descriptor, times taken in this process)


class RunDirInUse(SelfsupError):
    """Another process is writing into the run directory."""


def lock_run_dir(run_dir: str | Path) -> None:
    """Take the run directory's lock (again, if this process holds it); refuse, naming the holder,
    when another process holds it."""
    path = Path(run_dir).resolve()
    if path in _held:
        descriptor, count = _held[path]
        _held[path] = (descriptor, count + 1)
        return
    descriptor = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EACCES or EAGAIN: another process holds it
        holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise RunDirInUse(f"{run_dir} is in use by {holder}; wait for it to finish, or write elsewhere "
                          "(another --run-dir or --out); nothing was changed") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"process {os.getpid()} ({' '.join(sys.argv)[:300]})\n".encode(), 0)
    _held[path] = (descriptor, 1)


def unlock_run_dir(run_dir: str | Path) -> None:
    """Give back one taking of the lock; the last one releases it."""
    path = Path(run_dir).resolve()
    if path not in _held:
        return
    descriptor, count = _held[path]
    if count > 1:
        _held[path] = (descriptor, count - 1)
        return
    del _held[path]
    os.ftruncate(descriptor, 0)
    fcntl.lockf(descriptor, fcntl.LOCK_UN)
    os.close(descriptor)


def run_dir_around(path: str | Path) -> Path | None:
    """The run directory ``path`` is in: itself or the nearest of its three closest ancestors that
    holds ``checkpoints/`` and a run's record (a checkpoint file, ``RUN/eval``, ``RUN/embeddings/x``),
    or None."""
    path = Path(path).resolve()
    for candidate in [path, *path.parents][:4]:
        if (candidate / "checkpoints").is_dir() and ((candidate / "config.yaml").is_file()
                                                     or (candidate / "meta.json").is_file()):
            return candidate
    return None


@contextmanager
def writing_into(*paths: str | Path, own: str | Path | None = None) -> Iterator[None]:
    """Hold the lock of every run directory that one of ``paths`` lies in (and of ``own``, a run
    directory this command creates) while the block writes there; the main process only."""
    found = {run_dir_around(path) for path in paths} - {None}
    if own is not None:
        Path(own).mkdir(parents=True, exist_ok=True)
        found.add(Path(own).resolve())
    with ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:  # torchrun's rank, known before any process group exists
            for run_dir in sorted(found):
                lock_run_dir(run_dir)
                stack.callback(unlock_run_dir, run_dir)
        yield
