"""What several commands share: flag groups, the flag -> config key shortcuts, run folder names,
``KEY=VALUE`` pairs, and the printing of label-fraction sweeps. Torch-free: the parser is built
before any command runs."""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..arguments import Range, rule_text
from ..defaults import TRAINING_DEFAULTS
from ..errors import SelfsupError

SHORTCUTS = {"method": "method.name", "epochs": "train.epochs", "batch_size": "train.batch_size",
             "minutes": "train.minutes", "device": "train.device", "precision": "train.precision",
             "data": "data.name", "data_root": "data.root", "data_source": "data.source",
             "label_noise": "data.label_noise",
             "network": "eval.network"}
"""Flags that stand for a config key: ``--data X`` is ``--set data.name=X``."""


def shortcut_overrides(args: argparse.Namespace, *flags: str) -> list[str]:
    """``KEY=VALUE`` overrides of the shortcut ``flags`` given (all of them when none are named)."""
    return [f"{SHORTCUTS[flag]}={getattr(args, flag)}" for flag in (flags or SHORTCUTS)
            if getattr(args, flag, None) is not None]


def config_from_args(args: argparse.Namespace, overrides: list[str] | None = None,  # noqa: ANN201 (a RunConfig)
                     base: Path | None = None):
    """The resolved config of ``-c`` (else of the file ``base``, else the defaults) with ``overrides``
    (default: the shortcut flags, then ``--set``)."""
    from ..config import apply_overrides, find_config, read_yaml, resolve

    raw = read_yaml(find_config(args.config)) if args.config else read_yaml(base) if base is not None else {}
    if getattr(args, "method", None) and isinstance(raw.get("method"), dict) and raw["method"].get("name") != args.method:
        raw["method"] = {"name": args.method}  # another method's hyper-parameters do not carry over
    return resolve(apply_overrides(raw, shortcut_overrides(args) + list(args.set) if overrides is None else overrides))


def default_run_dir(*parts: object) -> str:
    """``runs/<parts>-<date>-<time>``: a new folder for a run the user did not name."""
    return "runs/" + "-".join(str(part) for part in (*parts, time.strftime("%Y%m%d-%H%M%S")))


def parse_pairs(items: list[str], flag: str, example: str, value: Callable[[str], Any] = str,
                form: str = "KEY=VALUE") -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, ``value`` applied to each value; one clear error otherwise."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SelfsupError(f"{flag} takes {form} pairs (e.g. {example}), got {' '.join(bad)}")
    pairs = (item.split("=", 1) for item in items)
    try:
        return {key: value(text) for key, text in pairs}
    except (ValueError, yaml.YAMLError) as err:  # a number that is not one, YAML that does not parse
        raise SelfsupError(f"{flag}: {' '.join(str(err).split())}") from None


def ranged(kind: type, rule: Range) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` within ``rule``, or one line naming the accepted range."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got '{text}'") from None
        if not rule.holds(value):
            raise argparse.ArgumentTypeError(f"must be {rule_text(rule, value)}, got {text}")
        return value
    parse.__name__ = kind.__name__  # what argparse names in its messages
    return parse


POSITIVE_INT = ranged(int, Range(1))
COUNT = ranged(int, Range(0))
POSITIVE = ranged(float, Range(0, open_low=True))
NON_NEGATIVE = ranged(float, Range(0))
FRACTION = ranged(float, Range(0, 1))
LABEL_FRACTION = ranged(float, Range(0, 1, open_low=True))
"""Argparse types of the ranges options take (the config's own are in :mod:`selfsup.arguments`)."""


def numbers(kind: type, rule: Range = Range()) -> Callable[[str], list]:
    """An argparse type for ``1,2,3``: a list of ``kind`` within ``rule`` (used with ``action="extend"``)."""
    one = ranged(kind, rule)

    def parse(text: str) -> list:
        try:
            return [one(part) for part in text.split(",") if part.strip()]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err} (in '{text}')" if "," in text else str(err)) from None
    return parse


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML preset: a path, or the name of a shipped preset "
                                               "(e.g. simclr_fashion_mnist; see --list-methods)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.3 (repeatable)")
    parser.add_argument("--data", help="dataset name (shortcut for --set data.name=...)")
    parser.add_argument("--data-root", help="dataset folder or file (data.root)")
    parser.add_argument("--data-source", choices=["auto", "memory", "stream", "cache"],
                        help="data.source: hold decoded images in memory, stream image files through worker "
                             "processes (crops from the full image), or read a decoded cache from disk")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (train.device)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="train.precision")


def add_training_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, strategy: str,
                      label_smoothing: bool = True) -> None:
    """How a classifier trains (:class:`~selfsup.recipes.ClassifierTraining`), with ``strategy``'s defaults."""
    defaults = TRAINING_DEFAULTS[strategy]
    parser.add_argument("--epochs", type=POSITIVE_INT, default=defaults.epochs, help=f"default {defaults.epochs}")
    parser.add_argument("--steps", type=POSITIVE_INT, help="train for this many optimisation steps instead of --epochs "
                                                  "(the same schedule whatever the number of labels)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=defaults.batch_size, help=f"default {defaults.batch_size}")
    parser.add_argument("--lr", type=POSITIVE, default=defaults.lr,
                        help=f"SGD peak rate at batch 256, cosine decay (default {defaults.lr:g})")
    parser.add_argument("--weight-decay", type=NON_NEGATIVE, default=defaults.weight_decay,
                        help=f"default {defaults.weight_decay:g}")
    if label_smoothing:
        parser.add_argument("--label-smoothing", type=FRACTION, default=0.0,
                            help="eps: cross-entropy with (1 - eps) one-hot + eps / K targets, i.e. distillation "
                                 "from a uniform teacher (default 0)")
    parser.add_argument("--seed", type=COUNT, default=0, help="seed of the label choice and the training (default 0)")
    parser.add_argument("--test-every", type=COUNT, default=1, help="test top-1 every N epochs and after the last "
                                                                   "(default 1)")
    parser.add_argument("--run-dir", help="where checkpoints and logs go")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")


def classifier_training(args: argparse.Namespace, strategy: str, start_lr_scale: float = 1.0):  # noqa: ANN201
    """The :class:`~selfsup.recipes.ClassifierTraining` the training flags describe."""
    from ..recipes.classifier import ClassifierTraining

    changes = {"backbone_lr_scale": args.backbone_lr_scale} if getattr(args, "backbone_lr_scale", None) is not None else {}
    return ClassifierTraining.for_strategy(
        strategy, lr=args.lr, weight_decay=args.weight_decay, start_lr_scale=start_lr_scale, epochs=args.epochs,
        steps=args.steps, batch_size=args.batch_size, label_smoothing=getattr(args, "label_smoothing", 0.0),
        test_every=args.test_every, device=args.device or "auto", precision=args.precision or "auto",
        seed=args.seed, **changes)


def print_fractions(report: dict, out_dir: Path) -> int:
    """A label-fraction sweep's mean +- std per fraction, and where its tables are."""
    for row in report["summary"]:
        print(f"{row['labels']:>6s} of the labels: test top-1 {row['mean top-1 (%)']:.2f} +- {row['std']:.2f} "
              f"over {row['seeds']} seed(s)")
    print(f"results: {out_dir / 'finetune.json'}, {out_dir / 'finetune.md'}")
    return 0


def one_run_or_sweep(args: argparse.Namespace, what: str, run_dir: Callable[[], str], sweep_dir: Callable[[], str],
                     one: Callable[[str, float], dict], sweep: Callable[[Path, list[int]], dict]) -> int:
    """One run for one label fraction and one seed (``one(run_dir, fraction)``), a sweep over
    ``--labels`` x ``--seeds`` otherwise (``sweep(out_dir, seeds)``, mean +- std per fraction). ``what``
    says what the one run did, ``{pct}`` standing for its percentage of the labels."""
    seeds = args.seeds or [args.seed]
    if len(args.labels) == 1 and len(seeds) == 1:
        folder = args.run_dir or run_dir()
        summary = one(folder, args.labels[0])
        print(f"{what.format(pct=f'{100 * args.labels[0]:g}')}: test top-1 "
              f"{summary.get('test_top1', float('nan')):.2f}%  ({folder})")
        return 0
    out_dir = Path(args.run_dir or sweep_dir())
    return print_fractions(sweep(out_dir, seeds), out_dir)
