"""``selfsup pretrain``, ``selfsup import`` (a torchvision ResNet as a run) and ``selfsup demo``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SelfsupError
from .common import NON_NEGATIVE, POSITIVE, POSITIVE_INT, add_config_args, config_from_args, default_run_dir

EPILOG = """\
examples:
  selfsup pretrain --list-methods
  selfsup pretrain -c simclr_fashion_mnist --epochs 10
  selfsup pretrain -c simclr_cifar10 --set optim.lr=0.6 --set train.batch_size=512
  selfsup pretrain --run-dir runs/simclr-fmnist --resume          # continue after a crash
  torchrun --nproc_per_node 2 -m selfsup pretrain -c simclr_fashion_mnist   # 2 processes

Any config key can be set with --set section.key=value (values are YAML); unknown keys are
refused with the closest valid key. The resolved config, git revision and library versions
are saved in the run directory. SIGTERM, SIGUSR1 (a cluster's warning) or Ctrl-C finish the
current step, write checkpoints/last.pt and exit with 143, 138 or 130; --resume continues.
"""


def list_methods() -> None:
    from ..config import list_presets
    from ..methods import describe_methods

    print("methods (selfsup pretrain --method NAME, or a preset with -c):")
    methods = describe_methods()
    width = max(len(name) for name, _ in methods)
    for name, summary in methods:
        presets = [p for p in list_presets() if p.startswith(name + "_")]
        print(f"  {name:{width}s} {summary}")
        if presets:
            print(f"  {'':{width}s} presets: {', '.join(presets)}")


def pretrain(args: argparse.Namespace) -> int:
    if args.list_methods:
        list_methods()
        return 0
    own = Path(args.run_dir) / "config.yaml" if args.resume and args.run_dir and not args.config else None
    config = config_from_args(args, base=own if own is not None and own.is_file() else None)
    if args.allow_change and not args.resume:
        raise SelfsupError("--allow-change goes with --resume: it accepts settings that differ from the run's")
    if args.print_config:
        from ..config import to_yaml

        print(to_yaml(config), end="")
        return 0
    from ..engine import dist
    from ..recipes.pretrain import pretrain as run_pretraining

    if args.run_dir is None and dist.launched_by_torchrun():
        raise SelfsupError("under torchrun pass --run-dir, so that every process writes to the same run")
    run_pretraining(config, args.run_dir or default_run_dir(config.method_name, config.data.name), resume=args.resume,
                    quiet=args.quiet, allow_change=tuple(args.allow_change))
    return 0


def import_weights(args: argparse.Namespace) -> int:
    from ..export import import_torchvision

    path = import_torchvision(args.weights, args.run_dir, config_from_args(args), quiet=args.quiet)
    print(f"wrote {path}: evaluate, fine-tune, distill or cluster it like any selfsup run, e.g.\n"
          f"  selfsup eval all {args.run_dir}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from ..config import find_config
    from ..demo import run_demo

    run_demo(args.run_dir, find_config(args.config), list(args.set), minutes=args.minutes, quiet=args.quiet)
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("pretrain", help="pretrain an encoder with a self-supervised method",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--method", help="method name (see --list-methods)")
    p.add_argument("--epochs", type=POSITIVE_INT, help="train.epochs")
    p.add_argument("--minutes", type=POSITIVE,
                   help="train.minutes: time the first steps and size the run to train for about this long")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="train.batch_size (global, over all processes)")
    p.add_argument("--run-dir", help="where config, metrics, checkpoints and report go (default runs/<method>-<data>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from checkpoints/last.pt (start it if none exists); without "
                        "-c, the run's own config.yaml, with any --set on top")
    p.add_argument("--allow-change", nargs="+", action="extend", default=[], metavar="KEY",
                   help="with --resume: accept these settings differing from the run's (e.g. train.epochs to "
                        "extend it); every other difference is refused. Accepted changes are recorded with "
                        "their step in meta.json")
    p.add_argument("--list-methods", action="store_true", help="list the methods and their presets, then exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, then exit")
    p.add_argument("--network", choices=("student", "teacher"),
                   help="eval.network: for methods with a momentum teacher, which network the evaluations "
                        "measure (default: the paper's, DINO's teacher)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=pretrain)

    p = commands.add_parser("import", help="a torchvision ResNet's weights (.pth/.pt/.safetensors) as a selfsup "
                                            "checkpoint, for eval, finetune, distill and cluster")
    p.add_argument("weights", help="the state dict of a torchvision resnet18/34/50 (fc is dropped)")
    p.add_argument("--run-dir", required=True, help="where checkpoints/last.pt is written")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=import_weights)

    p = commands.add_parser("demo", help="pretrain SimCLR on Fashion-MNIST for a few minutes, evaluate, compare")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--minutes", type=NON_NEGATIVE, default=5.0,
                   help="time budget of the whole demo (default 5): the evaluation's cost is estimated and "
                        "pretraining gets the rest, sized by timing its first steps; 0 trains the preset's epochs")
    p.add_argument("-c", "--config", default="demo", help="preset to run (default: the shipped demo preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=demo)
