"""Stopping a run cleanly when the machine is about to be taken away.

A cluster warns a job before it kills it: SLURM sends SIGTERM (and, with ``--signal=USR1@120``,
SIGUSR1 two minutes early); a person presses Ctrl-C. While a fit runs, each of these finishes the
step in progress, writes ``checkpoints/last.pt`` (atomically, with the position in the epoch and
every random stream), and stops with :class:`Preempted`, whose exit status is 128 + the signal's
number, as if the signal had killed the process (143 for SIGTERM, 138 for SIGUSR1, 130 for Ctrl-C):
schedulers and shells read it as usual, and ``--resume`` continues exactly. A second Ctrl-C stops
at once, without saving. All processes of a distributed run stop after the same step (the request
travels with the per-step reduction the loss already makes).
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after saving ``last.pt``; ``exit_status`` is 128 + its number."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step, self.exit_status = signum, step, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoints/last.pt holds "
                         "it. Continue with the same command and --resume")


class StopRequests:
    """While entered (in the main thread), the stop signals set :attr:`requested` instead of killing the
    process; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        self.requested = None
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signum  # only a flag: printing here could re-enter a write to stderr (tqdm's)

    def announce(self) -> None:
        """Say what the stop does, once the step in progress has finished (outside the handler)."""
        name = signal.Signals(self.requested).name if self.requested else "a stop asked by another process"
        print(f"\n{name}: finishing this step and saving checkpoints/last.pt (Ctrl-C again stops at once, "
              "without saving)", file=sys.stderr)
