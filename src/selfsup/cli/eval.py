"""``selfsup eval`` (kNN, linear, few-shot, layer-wise probes, fine-tuning) and ``selfsup tokens``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import Range
from ..defaults import TRAINING_DEFAULTS
from ..errors import SelfsupError
from .common import (COUNT, LABEL_FRACTION, NON_NEGATIVE, POSITIVE_INT, add_config_args, add_training_args,
                     classifier_training, config_from_args, numbers, one_run_or_sweep, parse_pairs, ranged,
                     shortcut_overrides)

EPILOG = """\
examples:
  selfsup eval all runs/simclr-fmnist                  # kNN + linear probe of checkpoints/last.pt
  selfsup eval layers runs/rotation runs/jigsaw --dim 1024 2048
  selfsup eval finetune runs/simclr-fmnist --labels 0.1 --head-layers 1   # SimCLR v2's fine-tuning
  selfsup eval finetune runs/simclr-fmnist --labels 0.05 0.1 0.2 1 --seeds 0 1 2 3 4   # mean +- std
  selfsup eval fewshot runs/simclr-fmnist runs/byol-fmnist --ways 5 --shots 1 5    # episodes, 95% intervals
"""

EVAL_FLAGS = {"ways": "fewshot_ways", "queries": "fewshot_queries", "episodes": "fewshot_episodes",
              "shots": "fewshot_shots", "classes": "fewshot_classes", "features": "features"}
"""Flags that stand for a key of the checkpoint's ``eval`` section."""


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """The config changes the flags ask for, then ``--set``."""
    overrides = shortcut_overrides(args, "data", "data_root", "device", "precision")
    if args.k:  # the first is the one kept as 'knn'; all of them side by side from one search
        overrides += [f"eval.knn_k={args.k[0]}", f"eval.knn_grid_k={args.k}"]
    if args.temperature:
        overrides += [f"eval.knn_temperature={args.temperature[0]}", f"eval.knn_grid_temperatures={args.temperature}"]
    if args.bn_recalibration is not None:
        overrides.append(f"eval.bn_recalibration={ {'auto': 'auto', 'on': 'true', 'off': 'false'}[args.bn_recalibration]}")
    overrides += [f"eval.{key}={getattr(args, flag)}" for flag, key in EVAL_FLAGS.items()
                  if getattr(args, flag) is not None]
    return overrides + list(args.set)


def evaluate(args: argparse.Namespace) -> int:
    if args.protocol == "layers":
        return layers(args)
    if args.protocol == "finetune":
        return finetune(args)
    from ..engine.lock import writing_into
    from ..recipes.evaluate import checkpoint_evaluator, pixel_evaluator

    protocols = ["knn", "linear"] if args.protocol == "all" else [args.protocol]
    if "knn" in protocols:  # the conventions side by side, from the same neighbour search
        protocols.insert(protocols.index("knn") + 1, "knn-grid")
    if args.pixels:
        config = config_from_args(args, eval_overrides(args))
        evaluators = [(pixel_evaluator(config, Path(args.out or "runs/pixels/eval"), quiet=args.quiet), config)]
    else:
        if not args.checkpoint:
            raise SelfsupError("give a checkpoint (or run directory) to evaluate, or --pixels for the raw-pixel baseline")
        evaluators = [checkpoint_evaluator(path, eval_overrides(args), Path(args.out) if args.out else None, args.quiet)
                      for path in args.checkpoint]
    for evaluator, config in evaluators:
        with writing_into(evaluator.out_dir):  # one writer per run directory, training included
            results = evaluator.run(protocols, config.eval, config.train.seed)
        for protocol in protocols:
            print_result(evaluator.name, protocol, results[evaluator.name], config.eval)
        print(f"results: {evaluator.out_dir / 'results.json'}")
    return 0


def print_result(name: str, protocol: str, results: dict, settings) -> None:  # noqa: ANN001 (an EvalConfig)
    if protocol == "fewshot":
        for shots in settings.fewshot_shots:
            entry = results[f"{settings.fewshot_ways}-way {shots}-shot"]
            print(f"{name}  {settings.fewshot_ways}-way {shots}-shot: {entry['top1']:.2f}% "
                  f"+- {entry['ci95']:.2f} (95%, {entry['episodes']} episodes)")
    elif protocol == "knn-grid":
        from ..eval.knn import knn_grid_table

        grid = {key: entry for key, entry in results.items() if key.startswith("knn k=")
                and entry["k"] in settings.knn_grid_k and entry["temperature"] in settings.knn_grid_temperatures}
        if len(grid) > 1:
            print(knn_grid_table(name, grid))
    else:
        print(f"{name}  {protocol}: top-1 {results[protocol]['top1']:.2f}%")


def layers(args: argparse.Namespace) -> int:
    from ..engine.lock import writing_into
    from ..eval.layers import layers_table
    from ..recipes.evaluate import layers_for_checkpoints

    if args.pixels or not args.checkpoint:
        raise SelfsupError("eval layers probes the stages of trained checkpoints: give one or more checkpoints "
                           "(or run directories)")
    with writing_into(args.out or args.checkpoint[0]):  # the output's run directory (default: the first's)
        everything, out_dir = layers_for_checkpoints(args.checkpoint, eval_overrides(args),
                                                     Path(args.out) if args.out else None, args.dim, args.train_size,
                                                     args.quiet)
    print(layers_table(everything))
    print(f"results: {out_dir / 'layers.json'}, chart: {out_dir / 'layers.png'}")
    return 0


def finetune(args: argparse.Namespace) -> int:
    from ..recipes.evaluate import default_output_dir
    from ..recipes.finetune import finetune as run_finetune
    from ..recipes.finetune import finetune_sweep

    if len(args.checkpoint) != 1 or args.pixels:
        raise SelfsupError(f"eval finetune takes one checkpoint (or run directory), got {len(args.checkpoint)}")
    source, overrides, heads = args.checkpoint[0], eval_overrides(args), args.head_layers
    settings = classifier_training(args, "finetune")
    settings.layer_modes = parse_pairs(args.layer_modes, "--layer-modes", "res5=retrain", form="STAGE=MODE")
    folder = default_output_dir(Path(source))
    return one_run_or_sweep(
        args, f"fine-tuned on {{pct}}% of the labels from {heads} head layer(s)",
        run_dir=lambda: str(folder / f"finetune-{100 * args.labels[0]:g}pct-h{heads}"),
        sweep_dir=lambda: str(folder / f"finetune-h{heads}"),
        one=lambda run_dir, labels: run_finetune(source, run_dir, settings, head_layers=heads, labels=labels,
                                                 overrides=overrides, resume=args.resume, quiet=args.quiet),
        sweep=lambda out_dir, seeds: finetune_sweep(source, out_dir, settings, fractions=args.labels, seeds=seeds,
                                                    head_layers=heads, overrides=overrides, quiet=args.quiet))


def tokens(args: argparse.Namespace) -> int:
    from ..engine.lock import writing_into
    from ..explore.tokens import tokens_for_checkpoints

    with writing_into(args.out or args.checkpoint[0]):  # the output's run directory (default: the first's)
        paths, results = tokens_for_checkpoints(args.checkpoint, list(args.set), Path(args.out) if args.out else None,
                                                args.images, args.quiet)
    for name, entry in results.items():
        print(f"{name}: median patch-token norm {entry['median_patch_norm']:.2f}, "
              f"outliers (> 2 x median) {100 * entry['outlier_share']:.2f}% of patches")
    print(f"attention maps: {paths['attention']}, token norms: {paths['norms']}")
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval", help="evaluate checkpoints: kNN, linear probe, layer-wise probe, fine-tuning",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=["knn", "linear", "all", "layers", "finetune", "fewshot"],
                   help="knn: weighted kNN (k=200, T=0.07; and k=10, 20, 100, 200 side by side); linear: logistic "
                        "regression on frozen features; layers: linear probes on pooled conv1, res2..res5 features, "
                        "one chart for all checkpoints; finetune: train encoder + linear head on (a fraction of) the "
                        "labels; fewshot: N-way K-shot episodes on the test split, nearest class centroid of frozen "
                        "features")
    p.add_argument("checkpoint", nargs="*", help="checkpoint files or run directories (their checkpoints/last.pt)")
    add_config_args(p)
    p.add_argument("--pixels", action="store_true", help="evaluate raw pixels instead (the baseline)")
    p.add_argument("-k", "--k", type=numbers(int, Range(1)), action="extend",
                   help="neighbours for the weighted kNN, several as -k 10,20 or -k 10 -k 20: a row each from one "
                        "neighbour search, the first kept as the 'knn' result (default: 200, NPID's, kept, and "
                        "10, 20, 100, 200, the values DINO reports, solo-learn's 20 among them, side by side)")
    p.add_argument("-T", "--temperature", type=numbers(float, Range(0, open_low=True)), action="extend",
                   help="kNN vote temperature(s), several as -T 0.05,0.1 (default 0.07: DINO, solo-learn, NPID)")
    p.add_argument("--features", choices=["backbone", "embedding"],
                   help="eval.features: pooled backbone features (default), or the method's own embedding "
                        "(NPID/PIRL memory features, SimCLR projection)")
    p.add_argument("--bn-recalibration", choices=["auto", "on", "off"],
                   help="eval.bn_recalibration: re-estimate BatchNorm statistics on training images first "
                        "(auto: for tile-trained methods)")
    p.add_argument("--out", help="output folder (default: RUN/eval of the first checkpoint)")
    p.add_argument("--dim", type=POSITIVE_INT, nargs="+", default=[2048],
                   help="layers: pool every stage to about this many features (default 2048); several sizes "
                        "(e.g. --dim 1024 2048 4096) give a table and a chart per size, from one forward pass")
    p.add_argument("--train-size", type=POSITIVE_INT,
                   help="layers: probe on a class-balanced subset of this many training images (faster)")
    group = p.add_argument_group("fewshot")
    group.add_argument("--ways", type=ranged(int, Range(2)), help="classes per episode (eval.fewshot_ways, default 5)")
    group.add_argument("--shots", type=POSITIVE_INT, nargs="+", help="labelled images per class, one result each "
                                                            "(eval.fewshot_shots, default 1 5)")
    group.add_argument("--queries", type=POSITIVE_INT, help="query images per class (default 15)")
    group.add_argument("--episodes", type=POSITIVE_INT, help="episodes (default 600)")
    group.add_argument("--classes", type=COUNT, nargs="+",
                       help="draw episodes from these class indices only (held-out classes); default all")
    group = p.add_argument_group("finetune")
    group.add_argument("--labels", type=LABEL_FRACTION, nargs="+", default=[1.0],
                       help="fraction(s) of the training labels, class-balanced by the seed (default 1.0; e.g. "
                            "--labels 0.01 0.05 0.1 0.2 1)")
    group.add_argument("--seeds", type=COUNT, nargs="+",
                       help="repeat every fraction over these seeds (labels and training), mean +- std in "
                            "RUN_DIR/finetune.md; a killed sweep continues where it was")
    group.add_argument("--head-layers", type=COUNT, default=0,
                       help="keep this many hidden layers of the projection head on the trunk (SimCLR v2: 1, "
                            "the middle of its 3-layer head); default 0, the backbone's output")
    add_training_args(group, "finetune")
    group.add_argument("--backbone-lr-scale", type=NON_NEGATIVE,
                       help="trunk learning rate as a fraction of the head's (default "
                            f"{TRAINING_DEFAULTS['finetune'].backbone_lr_scale:g})")
    group.add_argument("--layer-modes", nargs="+", default=[], metavar="STAGE=MODE",
                       help="transfer mode per trunk stage (conv1, res2..res5): frozen, finetune (default, at "
                            "--backbone-lr-scale) or retrain (re-initialised, at the head's rate), e.g. "
                            "--layer-modes conv1=frozen res2=frozen res5=retrain")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=evaluate)

    p = commands.add_parser("tokens", help="ViT checkpoints: [CLS] attention maps and token-norm histograms "
                                           "(with and without registers)")
    p.add_argument("checkpoint", nargs="+", help="checkpoint files or run directories of ViT runs")
    p.add_argument("--images", type=POSITIVE_INT, default=8, help="test images to draw (default 8)")
    p.add_argument("--out", help="output folder (default: RUN/eval/tokens of the first checkpoint)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. data.root=...")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=tokens)
