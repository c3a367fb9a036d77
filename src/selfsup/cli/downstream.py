"""The downstream strategies that start from an encoder (a checkpoint's, or a config's at random
initialisation): ``selfsup continual``, ``selfsup semisup`` and ``selfsup multitask``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SelfsupError
from .common import (COUNT, FRACTION, LABEL_FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, add_config_args,
                     add_training_args, classifier_training, config_from_args, default_run_dir, one_run_or_sweep,
                     parse_pairs, shortcut_overrides)

EPILOG_CONTINUAL = """\
examples (split Fashion-MNIST: 5 tasks of 2 classes):
  selfsup continual -c simclr_fashion_mnist --set backbone.width=16 --epochs 2 --run-dir runs/cl-scratch
  selfsup continual runs/simclr-fmnist --strategies finetune lwf rehearsal --scenarios class --buffer-size 500
  selfsup continual runs/simclr-fmnist --classes-per-task 5 --order 9 8 7 6 5 4 3 2 1 0
Each scenario x strategy goes to RUN_DIR/<scenario>-<strategy> (accuracy matrix .md/.png/.json);
the comparison to RUN_DIR/continual.md. Run the same command again after a kill: it resumes.
"""

EPILOG_SEMISUP = """\
examples:
  selfsup semisup -c simclr_fashion_mnist --method fixmatch --labels 0.01 --epochs 5 --run-dir runs/fixmatch
  selfsup semisup runs/simclr-fmnist --method mean-teacher --labels 0.01 0.05 --seeds 0 1 2   # mean +- std
  selfsup semisup runs/simclr-fmnist --method fixmatch --option threshold=0.9 --ratio 3
  selfsup semisup runs/simclr-fmnist --method mixmatch --steps 2000 --rampup-steps 500   # a short run, short ramp
methods: labels-only, pseudo-label, entropy-min, pi-model, temporal-ensembling, mean-teacher, fixmatch,
uda, mixmatch. An epoch is one pass over the unlabelled images. Ramps are the papers' lengths in steps;
a run that ends inside its ramp, or whose evaluated moving average still holds the initial weights,
says so. Killed sweeps resume by themselves.
"""

EPILOG_MULTITASK = """\
examples (Fashion-MNIST: class + coarse grouping, or class + rotation):
  selfsup multitask -c simclr_fashion_mnist --set backbone.width=8 --epochs 3 --run-dir runs/mtl
  selfsup multitask runs/simclr-fmnist --tasks class rotation --sharing hard cross-stitch --weighting dwa
  selfsup multitask -c simclr_cifar10 --tasks class coarse --coarse 0,1,8,9 2,3,4,5,6,7 --weights coarse=0.5
Each task alone (the single-task baselines) and every sharing x weighting go to RUN_DIR/<name>;
the comparison to RUN_DIR/multitask.md and .png. Run the same command again after a kill: it resumes.
"""


def starting_point(args: argparse.Namespace):  # noqa: ANN201 (a StartingPoint)
    """A checkpoint's encoder (``--set`` changes its config), or with ``-c`` a config's backbone at
    random initialisation seeded by ``--seed``."""
    from ..recipes.loading import StartingPoint

    if args.checkpoint and args.config:
        raise SelfsupError("give a checkpoint to start from or a config (-c) for a random initialisation, not both")
    if args.checkpoint:
        overrides = shortcut_overrides(args, "data_root", "device") + list(args.set)
        return StartingPoint.load(args.checkpoint, None, overrides, quiet=args.quiet)
    return StartingPoint.load(None, config_from_args(args), seed=args.seed, quiet=args.quiet)


def continual(args: argparse.Namespace) -> int:
    from ..recipes.continual import ContinualSettings, continual as learn_tasks

    start = starting_point(args)
    settings = ContinualSettings(classes_per_task=args.classes_per_task, order=args.order,
                                 buffer_size=args.buffer_size, lwf_weight=args.lwf_weight,
                                 lwf_temperature=args.lwf_temperature, lwf_warmup_epochs=args.lwf_warmup_epochs)
    out_dir = Path(args.run_dir or default_run_dir("continual", start.data.dataset))
    result = learn_tasks(start, out_dir, classifier_training(args, "continual", start.backbone_lr_scale),
                         strategies=args.strategies, scenarios=args.scenarios, settings=settings, quiet=args.quiet)
    for row in result["summary"]:
        print(f"{row['scenario']:>18s}  {row['strategy']:<18s} average accuracy {row['average accuracy (%)']:6.2f}%  "
              f"forgetting {row['forgetting']:6.2f}  final row {row['final row']}")
    print(f"results: {out_dir / 'continual.md'}, matrices and plots in {out_dir}/<scenario>-<strategy>/")
    return 0


def semisup(args: argparse.Namespace) -> int:
    from ..config import load_yaml
    from ..recipes.semisup import SemiSupervisedSettings, semisup as learn_semisup, semisup_sweep

    options = parse_pairs(args.option, "--option", "threshold=0.9", load_yaml)
    settings = SemiSupervisedSettings(method=args.semisup_method, weight=args.weight, rampup_steps=args.rampup_steps,
                                      ratio=args.ratio, eval_ema=args.eval_ema,
                                      scale_by_label_fraction=not args.no_label_scaling, options=options)
    start = starting_point(args)
    training = classifier_training(args, "semisup", start.backbone_lr_scale)
    name = f"semisup-{args.semisup_method}"
    return one_run_or_sweep(
        args, f"{args.semisup_method} with {{pct}}% of the labels",
        run_dir=lambda: default_run_dir(name, f"{100 * args.labels[0]:g}pct"), sweep_dir=lambda: f"runs/{name}-sweep",
        one=lambda run_dir, labels: learn_semisup(start, run_dir, training, settings, labels=labels,
                                                  resume=args.resume, quiet=args.quiet),
        sweep=lambda out_dir, seeds: semisup_sweep(start, out_dir, training, settings, fractions=args.labels,
                                                   seeds=seeds, quiet=args.quiet))


def multitask(args: argparse.Namespace) -> int:
    from ..recipes.multitask import MultiTaskSettings, multitask_comparison

    weights = parse_pairs(args.weights, "--weights", "coarse=0.5", float, form="TASK=WEIGHT")
    try:
        coarse = [[int(c) for c in group.split(",")] for group in args.coarse] if args.coarse else None
    except ValueError as err:
        raise SelfsupError(f"--coarse takes comma-separated class indices: {err}") from None
    settings = MultiTaskSettings(tasks=args.tasks, weights=weights, soft_weight=args.soft_weight, coarse=coarse)
    start = starting_point(args)
    out_dir = Path(args.run_dir or default_run_dir("multitask", start.data.dataset))
    result = multitask_comparison(start, out_dir, classifier_training(args, "multitask", start.backbone_lr_scale),
                                  settings, sharings=args.sharing, weightings=args.weighting,
                                  single_task=not args.no_single_task, quiet=args.quiet)
    for row in result["rows"]:
        scores = "  ".join(f"{task} {row[f'{task} top-1']:.2f}%" for task in args.tasks
                           if row.get(f"{task} top-1") is not None)
        print(f"{row['run']:<22s} {scores}")
    print(f"results: {out_dir / 'multitask.md'}, {out_dir / 'multitask.png'}")
    return 0


def add_start_args(parser: argparse.ArgumentParser, strategy: str) -> None:
    parser.add_argument("checkpoint", nargs="?", help="a selfsup checkpoint or run directory to start from; "
                                                      "without it, -c CONFIG's backbone from random initialisation")
    add_config_args(parser)
    parser.add_argument("--backbone-lr-scale", type=NON_NEGATIVE,
                        help="trunk rate as a fraction of the head's (default 0.1 from a checkpoint, 1 from random "
                             "initialisation)")
    parser.add_argument("--quiet", action="store_true")
    add_training_args(parser, strategy, label_smoothing=False)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("continual", help="learn a sequence of tasks (split classes) with a continual strategy: "
                                              "accuracy matrix, forgetting, plot", epilog=EPILOG_CONTINUAL,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_start_args(p, "continual")
    p.add_argument("--strategies", nargs="+", default=["feature-extraction", "finetune", "lwf", "rehearsal", "joint"],
                   metavar="NAME", help="feature-extraction, finetune, lwf, rehearsal, joint (default: all)")
    p.add_argument("--scenarios", nargs="+", default=["task", "class"], metavar="NAME",
                   help="task (a head per task, task known at test) and/or class (one head over every class seen)")
    p.add_argument("--classes-per-task", type=POSITIVE_INT, default=2, help="default 2 (split Fashion-MNIST: 5 tasks)")
    p.add_argument("--order", type=COUNT, nargs="+", help="class order the tasks are cut from (default 0..K-1)")
    p.add_argument("--buffer-size", type=COUNT, default=200, help="rehearsal: images kept over the classes seen "
                                                                "(default 200)")
    p.add_argument("--lwf-weight", type=NON_NEGATIVE, default=1.0, help="LwF's lambda_o (default 1)")
    p.add_argument("--lwf-temperature", type=POSITIVE, default=2.0, help="LwF's T (default 2)")
    p.add_argument("--lwf-warmup-epochs", type=NON_NEGATIVE, default=1.0,
                   help="LwF: epochs of each new task with the trunk frozen, only the head training (default 1)")
    p.set_defaults(func=continual)

    p = commands.add_parser("semisup", help="semi-supervised training on a label fraction and every unlabelled "
                                            "image (FixMatch, Mean Teacher, MixMatch, ...)", epilog=EPILOG_SEMISUP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_start_args(p, "semisup")
    p.add_argument("--method", dest="semisup_method", default="fixmatch", help="default fixmatch (see below)")
    p.add_argument("--labels", type=LABEL_FRACTION, nargs="+", default=[0.01],
                   help="fraction(s) of the training labels, class-balanced by the seed (default 0.01)")
    p.add_argument("--seeds", type=COUNT, nargs="+", help="repeat every fraction over these seeds (mean +- std)")
    p.add_argument("--weight", type=NON_NEGATIVE, help="weight of the unlabelled loss (default: the method's)")
    p.add_argument("--rampup-steps", type=COUNT, help="optimiser steps over which that weight ramps up (default: the "
                                                    "method's paper's: 40,000 for the Pi-model, temporal ensembling "
                                                    "and Mean Teacher, 16,384 for MixMatch; a shorter run warns)")
    p.add_argument("--eval-ema", type=FRACTION, help="evaluate a moving average of the weights with this decay (default: "
                                                  "0.999 for FixMatch and MixMatch, as their papers; 0: the trained "
                                                  "network)")
    p.add_argument("--no-label-scaling", action="store_true",
                   help="Pi-model, temporal ensembling: do not scale the weight by the labelled share M/N (their "
                        "reference code does)")
    p.add_argument("--ratio", type=NON_NEGATIVE, help="mu: unlabelled images per labelled one in a batch (default: the "
                                               "method's, 7 for FixMatch)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the method, e.g. threshold=0.9 (FixMatch, UDA, pseudo-label), ema=0.999 "
                        "(Mean Teacher), alpha=0.6 (temporal ensembling), temperature=0.5 (MixMatch, UDA)")
    p.set_defaults(func=semisup)

    p = commands.add_parser("multitask", help="multi-task learning: hard / soft sharing, cross-stitch units, "
                                              "fixed or time-varying task weights", epilog=EPILOG_MULTITASK,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_start_args(p, "multitask")
    p.add_argument("--tasks", nargs="+", default=["class", "coarse"], help="class, coarse, rotation (default "
                                                                           "class coarse; the first is the main one)")
    p.add_argument("--sharing", nargs="+", default=["hard", "soft", "cross-stitch"], metavar="MODE",
                   help="hard, soft, cross-stitch (default: all three)")
    p.add_argument("--weighting", nargs="+", default=["fixed"], metavar="NAME",
                   help="fixed (--weights) and/or dwa (dynamic weight average, time-varying)")
    p.add_argument("--weights", nargs="+", default=[], metavar="TASK=W", help="fixed task weights (default 1 each)")
    p.add_argument("--soft-weight", type=NON_NEGATIVE, default=0.01,
                   help="soft sharing: weight of the L2 penalty between the trunks (default 0.01)")
    p.add_argument("--coarse", nargs="+", metavar="I,J,...", help="the coarse task's groups of class indices "
                                                                 "(known for fashion_mnist and cifar10)")
    p.add_argument("--no-single-task", action="store_true", help="skip the single-task baselines")
    p.set_defaults(func=multitask)
