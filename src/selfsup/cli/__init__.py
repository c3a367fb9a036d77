"""The ``selfsup`` command line. Configuration stops here: below, everything is typed arguments.

Each command's parser sits beside its handler, one module per family: :mod:`.pretrain` (pretrain,
import, demo), :mod:`.eval` (eval, tokens), :mod:`.classifiers` (supervised, distill, cluster),
:mod:`.downstream` (continual, semisup, multitask), :mod:`.tools` (data, export, report, runs,
embed, search) and :mod:`.reproduce`; :mod:`.common` holds what they share. Handlers parse, call
one recipe and print; the parser is built without importing torch.
"""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import SelfsupError
from . import classifiers, downstream, eval, pretrain, reproduce, tools

FAMILIES = (pretrain, eval, classifiers, downstream, tools, reproduce)
"""The modules whose ``add_parsers`` register the commands, in the order ``selfsup --help`` lists them."""


class Parser(argparse.ArgumentParser):
    """argparse, with a bad option or value reported as one line (what, and where help is), exit 2."""

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="selfsup", description="Self-supervised visual representation learning: pretrain, evaluate, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad option (one line already printed): its exit status
        return stop.code if isinstance(stop.code, int) else 2
    from ..engine import Preempted, dist
    from ..engine.runtime import record_command

    record_command(["selfsup", *(sys.argv[1:] if argv is None else argv)])  # every run records this command
    try:
        return args.func(args)
    except Preempted as stop:  # a cluster's warning or a Ctrl-C: last.pt was written first
        print(f"{stop}", file=sys.stderr)
        return stop.exit_status
    except SelfsupError as err:
        prefix = f"[rank {dist.rank()}] " if dist.world_size() > 1 else ""
        print(f"{prefix}error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted without saving. Continue a run from its last checkpoint with the same command and "
              "--resume (a fine-tuning sweep continues by itself).", file=sys.stderr)
        return 130
    finally:
        record_command(None)
        dist.destroy()


if __name__ == "__main__":
    sys.exit(main())
