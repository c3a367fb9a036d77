"""The ``selfsup`` command line. Configuration stops here: below, everything is typed arguments."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .errors import SelfsupError

EPILOG_PRETRAIN = """\
examples:
  selfsup pretrain --list-methods
  selfsup pretrain -c simclr_fashion_mnist --epochs 10
  selfsup pretrain -c simclr_cifar10 --set optim.lr=0.6 --set train.batch_size=512
  selfsup pretrain --run-dir runs/simclr-fmnist --resume          # continue after a crash
  torchrun --nproc_per_node 2 -m selfsup pretrain -c simclr_fashion_mnist   # 2 processes

Any config key can be set with --set section.key=value (values are YAML); unknown keys are
refused with the closest valid key. The resolved config, git revision and library versions
are saved in the run directory.
"""

EPILOG_EVAL = """\
examples:
  selfsup eval all runs/simclr-fmnist                  # kNN + linear probe of checkpoints/last.pt
  selfsup eval layers runs/rotation runs/jigsaw --dim 1024 2048
  selfsup eval finetune runs/simclr-fmnist --labels 0.1 --head-layers 1   # SimCLR v2's fine-tuning
  selfsup eval finetune runs/simclr-fmnist --labels 0.05 0.1 0.2 1 --seeds 0 1 2 3 4   # mean +- std
  selfsup eval fewshot runs/simclr-fmnist runs/byol-fmnist --ways 5 --shots 1 5    # episodes, 95% intervals
"""

EPILOG_DISTILL = """\
examples (SimCLR v2: pretrain, fine-tune on 10% of the labels, distill on every image):
  selfsup pretrain -c simclr_fashion_mnist --set method.proj_layers=3 --run-dir runs/simclr3
  selfsup eval finetune runs/simclr3 --labels 0.1 --head-layers 1 --run-dir runs/simclr3-ft
  selfsup distill runs/simclr3-ft --run-dir runs/simclr3-student                 # same backbone
  selfsup distill runs/simclr3-ft --student backbone.width=16 --run-dir runs/small-student
"""

EPILOG_SUPERVISED = """\
examples:
  selfsup supervised -c simclr_fashion_mnist --set backbone.width=16 --epochs 10 --run-dir runs/sup
  selfsup supervised -c simclr_fashion_mnist --label-noise 0.5 --run-dir runs/sup-noise50   # a noisy N_pre
  selfsup cluster runs/sup-noise50 --clusters 100 --run-dir runs/cf-noise50                  # ClusterFit from it
  selfsup supervised -c selfie_fashion_mnist --labels 0.05 0.1 0.2 1 --seeds 0 1 2 3 4 --steps 300
"""

EPILOG_CLUSTER = """\
examples:
  selfsup cluster runs/rotation --clusters 200 --epochs 10 --run-dir runs/clusterfit-rot
  selfsup cluster runs/rotation --layer res4 --student backbone.width=16 --run-dir runs/cf-res4
  selfsup cluster runs/clusterfit-rot/ncf ...      # N_cf is a checkpoint like any other
Run the same command again after a kill: finished stages (features, clusters) are kept and the
training of N_cf resumes from its last checkpoint.
"""

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


def _config_from_args(args: argparse.Namespace):  # noqa: ANN202
    from .config import apply_overrides, find_config, read_yaml, resolve

    raw = read_yaml(find_config(args.config)) if args.config else {}
    shortcuts = {"method": "method.name", "epochs": "train.epochs", "batch_size": "train.batch_size",
                 "minutes": "train.minutes", "device": "train.device", "precision": "train.precision",
                 "data": "data.name", "data_root": "data.root", "label_noise": "data.label_noise"}
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in shortcuts.items()
                 if getattr(args, flag, None) is not None]
    if getattr(args, "method", None) and isinstance(raw.get("method"), dict) and raw["method"].get("name") != args.method:
        raw["method"] = {"name": args.method}  # another method's hyper-parameters do not carry over
    return resolve(apply_overrides(raw, overrides + list(args.set)))


def _add_training_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, epochs: int, lr: float,
                       label_smoothing: bool = True) -> None:
    parser.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    parser.add_argument("--steps", type=int, help="train for this many optimisation steps instead of --epochs "
                                                  "(the same schedule whatever the number of labels)")
    parser.add_argument("--batch-size", type=int, default=256, help="default 256")
    parser.add_argument("--lr", type=float, default=lr, help=f"SGD peak rate at batch 256, cosine decay (default {lr})")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="default 5e-4")
    if label_smoothing:
        parser.add_argument("--label-smoothing", type=float, default=0.0,
                            help="eps: cross-entropy with (1 - eps) one-hot + eps / K targets, i.e. distillation "
                                 "from a uniform teacher (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label choice and the training (default 0)")
    parser.add_argument("--test-every", type=int, default=1, help="test top-1 every N epochs and after the last "
                                                                   "(default 1)")
    parser.add_argument("--run-dir", help="where checkpoints and logs go")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")


def _add_new_network_args(parser: argparse.ArgumentParser, source: str) -> None:
    """Training of a fresh network from a checkpoint's config (distill, cluster)."""
    _add_training_args(parser, epochs=30, lr=0.1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of {source} config, e.g. data.root=...")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--quiet", action="store_true")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML preset: a path, or the name of a shipped preset "
                                               "(e.g. simclr_fashion_mnist; see --list-methods)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.3 (repeatable)")
    parser.add_argument("--data", help="dataset name (shortcut for --set data.name=...)")
    parser.add_argument("--data-root", help="dataset folder or file (data.root)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (train.device)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="train.precision")


# ---------------------------------------------------------------- pretrain

def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import list_presets, to_yaml
    from .engine import dist
    from .methods import describe_methods

    if args.list_methods:
        print("methods (selfsup pretrain --method NAME, or a preset with -c):")
        methods = describe_methods()
        width = max(len(name) for name, _ in methods)
        for name, summary in methods:
            presets = [p for p in list_presets() if p.startswith(name + "_")]
            print(f"  {name:{width}s} {summary}")
            if presets:
                print(f"  {'':{width}s} presets: {', '.join(presets)}")
        return 0
    config = _config_from_args(args)
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    from .recipes.pretrain import pretrain

    run_dir = args.run_dir or f"runs/{config.method_name}-{config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.run_dir is None and dist.launched_by_torchrun():
        raise SelfsupError("under torchrun pass --run-dir, so that every process writes to the same run")
    pretrain(config, run_dir, resume=args.resume, quiet=args.quiet)
    return 0


# ---------------------------------------------------------------- eval

def cmd_eval(args: argparse.Namespace) -> int:
    from .recipes.evaluate import checkpoint_evaluator, pixel_evaluator

    protocols = ["knn", "linear"] if args.protocol == "all" else [args.protocol]
    if "knn" in protocols:  # the conventions side by side, from the same neighbour search
        protocols.insert(protocols.index("knn") + 1, "knn-grid")
    overrides = list(args.set)
    if args.protocol == "layers":
        return cmd_eval_layers(args, overrides)
    if args.protocol == "finetune":
        return cmd_eval_finetune(args, overrides)
    if args.k:
        overrides += [f"eval.knn_k={args.k[0]}", f"eval.knn_grid_k=[{', '.join(map(str, args.k))}]"]
    if args.temperature:
        overrides += [f"eval.knn_temperature={args.temperature[0]}",
                      f"eval.knn_grid_temperatures=[{', '.join(map(str, args.temperature))}]"]
    if args.features is not None:
        overrides.append(f"eval.features={args.features}")
    if args.bn_recalibration is not None:
        setting = {"auto": "auto", "on": "true", "off": "false"}[args.bn_recalibration]
        overrides.append(f"eval.bn_recalibration={setting}")
    for flag, key in (("ways", "fewshot_ways"), ("queries", "fewshot_queries"), ("episodes", "fewshot_episodes")):
        if getattr(args, flag) is not None:
            overrides.append(f"eval.{key}={getattr(args, flag)}")
    for flag, key in (("shots", "fewshot_shots"), ("classes", "fewshot_classes")):
        if getattr(args, flag):
            overrides.append(f"eval.{key}=[{', '.join(str(v) for v in getattr(args, flag))}]")
    for flag, key in (("data", "data.name"), ("data_root", "data.root"), ("device", "train.device"),
                      ("precision", "train.precision")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.pixels:
        from .config import apply_overrides, find_config, read_yaml, resolve

        raw = read_yaml(find_config(args.config)) if args.config else {}
        config = resolve(apply_overrides(raw, overrides))
        evaluator = pixel_evaluator(config, Path(args.out or "runs/pixels/eval"), quiet=args.quiet)
        evaluators = [(evaluator, config)]
    else:
        if not args.checkpoint:
            raise SelfsupError("give a checkpoint (or run directory) to evaluate, or --pixels for the raw-pixel baseline")
        evaluators = [checkpoint_evaluator(path, overrides, Path(args.out) if args.out else None, args.quiet)
                      for path in args.checkpoint]
    for evaluator, config in evaluators:
        results = evaluator.run(protocols, config.eval, config.train.seed)
        for protocol in protocols:
            if protocol == "fewshot":
                for shots in config.eval.fewshot_shots:
                    entry = results[evaluator.name][f"{config.eval.fewshot_ways}-way {shots}-shot"]
                    print(f"{evaluator.name}  {config.eval.fewshot_ways}-way {shots}-shot: {entry['top1']:.2f}% "
                          f"+- {entry['ci95']:.2f} (95%, {entry['episodes']} episodes)")
                continue
            if protocol == "knn-grid":
                grid = {name: entry for name, entry in results[evaluator.name].items() if name.startswith("knn k=")
                        and entry["k"] in config.eval.knn_grid_k
                        and entry["temperature"] in config.eval.knn_grid_temperatures}
                if len(grid) > 1:
                    print(knn_grid_table(evaluator.name, grid))
                continue
            print(f"{evaluator.name}  {protocol}: top-1 {results[evaluator.name][protocol]['top1']:.2f}%")
        print(f"results: {evaluator.out_dir / 'results.json'}")
    return 0


def _numbers(kind: type) -> Callable[[str], list]:
    """An argparse type for ``1,2,3``: a list of ``kind`` (used with ``action="extend"``)."""
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}s separated by commas, got '{text}'") from None
    return parse


def knn_grid_table(name: str, grid: dict[str, dict]) -> str:
    """The weighted kNN at several (k, T) as a markdown table, with the conventions each row is."""
    from .tables import markdown_table
    from .eval.knn import KNN_CONVENTIONS

    rows = [{"k": e["k"], "T": f"{e['temperature']:g}", "top-1 (%)": f"{e['top1']:.2f}",
             "reported by": KNN_CONVENTIONS.get(e["k"], "") if e["temperature"] == 0.07 else ""}
            for e in sorted(grid.values(), key=lambda e: (e["temperature"], e["k"]))]
    return f"{name}  weighted kNN:\n" + markdown_table(rows, ["k", "T", "top-1 (%)", "reported by"])


def cmd_eval_layers(args: argparse.Namespace, overrides: list[str]) -> int:
    from .recipes.evaluate import layers_for_checkpoints

    if args.pixels or not args.checkpoint:
        raise SelfsupError("eval layers probes the stages of trained checkpoints: give one or more checkpoints "
                           "(or run directories)")
    everything, out_dir = layers_for_checkpoints(args.checkpoint, overrides, Path(args.out) if args.out else None,
                                                 args.dim, args.train_size, args.quiet)
    from .eval.layers import layers_table

    print(layers_table(everything))
    print(f"results: {out_dir / 'layers.json'}, chart: {out_dir / 'layers.png'}")
    return 0


def _classifier_training(args: argparse.Namespace, backbone_lr_scale: float):  # noqa: ANN202
    from .engine import OptimConfig
    from .recipes.classifier import ClassifierTraining

    return ClassifierTraining(epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                              label_smoothing=getattr(args, "label_smoothing", 0.0), backbone_lr_scale=backbone_lr_scale,
                              optim=OptimConfig(name="sgd", lr=args.lr, weight_decay=args.weight_decay,
                                                warmup_epochs=0.0),
                              test_every=args.test_every, device=args.device or "auto",
                              precision=args.precision or "auto", seed=args.seed)


def _single_source(args: argparse.Namespace, what: str) -> str:
    if len(args.checkpoint) != 1 or args.pixels:
        raise SelfsupError(f"{what} takes one checkpoint (or run directory), got {len(args.checkpoint)}")
    return args.checkpoint[0]


def cmd_eval_finetune(args: argparse.Namespace, overrides: list[str]) -> int:
    from .recipes.evaluate import default_output_dir
    from .recipes.finetune import finetune, finetune_sweep

    source = _single_source(args, "eval finetune")
    settings = _classifier_training(args, args.backbone_lr_scale)
    bad = [item for item in args.layer_modes if "=" not in item]
    if bad:
        raise SelfsupError(f"--layer-modes takes STAGE=MODE pairs (e.g. res5=retrain), got {' '.join(bad)}")
    settings.layer_modes = dict(item.split("=", 1) for item in args.layer_modes)
    seeds = args.seeds or [args.seed]
    if len(args.labels) == 1 and len(seeds) == 1:
        run_dir = args.run_dir or str(default_output_dir(Path(source))
                                      / f"finetune-{100 * args.labels[0]:g}pct-h{args.head_layers}")
        summary = finetune(source, run_dir, settings, head_layers=args.head_layers, labels=args.labels[0],
                           overrides=overrides, resume=args.resume, quiet=args.quiet)
        print(f"fine-tuned on {100 * args.labels[0]:g}% of the labels from {args.head_layers} head layer(s): "
              f"test top-1 {summary.get('test_top1', float('nan')):.2f}%  ({run_dir})")
        return 0
    out_dir = Path(args.run_dir or default_output_dir(Path(source)) / f"finetune-h{args.head_layers}")
    report = finetune_sweep(source, out_dir, settings, fractions=args.labels, seeds=seeds,
                            head_layers=args.head_layers, overrides=overrides, quiet=args.quiet)
    return _print_sweep(report, out_dir)


def _print_sweep(report: dict, out_dir: Path) -> int:
    for row in report["summary"]:
        print(f"{row['labels']:>6s} of the labels: test top-1 {row['mean top-1 (%)']:.2f} +- {row['std']:.2f} "
              f"over {row['seeds']} seed(s)")
    print(f"results: {out_dir / 'finetune.json'}, {out_dir / 'finetune.md'}")
    return 0


# ---------------------------------------------------------------- supervised

def cmd_supervised(args: argparse.Namespace) -> int:
    from .recipes.finetune import supervised, supervised_sweep

    config = _config_from_args(args)
    settings = _classifier_training(args, 1.0)
    seeds = args.seeds or [args.seed]
    noise = f"-noise{100 * config.data.label_noise:g}" if config.data.label_noise else ""
    if len(args.labels) == 1 and len(seeds) == 1:
        run_dir = args.run_dir or f"runs/supervised-{config.data.name}{noise}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = supervised(config, run_dir, settings, labels=args.labels[0], resume=args.resume, quiet=args.quiet)
        print(f"trained from random initialisation on {100 * args.labels[0]:g}% of the labels: "
              f"test top-1 {summary.get('test_top1', float('nan')):.2f}%  ({run_dir})")
        return 0
    out_dir = Path(args.run_dir or f"runs/supervised-{config.data.name}{noise}-sweep")
    report = supervised_sweep(config, out_dir, settings, fractions=args.labels, seeds=seeds, quiet=args.quiet)
    return _print_sweep(report, out_dir)


# ---------------------------------------------------------------- distill

def cmd_distill(args: argparse.Namespace) -> int:
    from .recipes.distill import distill

    run_dir = args.run_dir or f"runs/distill-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = distill(args.teacher, run_dir, _classifier_training(args, 1.0), student=list(args.student),
                      temperature=args.temperature, teacher_weight=args.teacher_weight, labels=args.labels,
                      overrides=list(args.set), resume=args.resume, quiet=args.quiet)
    print(f"student test top-1 {summary.get('test_top1', float('nan')):.2f}%  ({run_dir})")
    return 0


# ---------------------------------------------------------------- downstream strategies

def _starting_point(args: argparse.Namespace):  # noqa: ANN202
    """A checkpoint's encoder (``--set`` changes its config), or with ``-c`` a config's backbone at
    random initialisation seeded by ``--seed``."""
    from .recipes.loading import StartingPoint

    if args.checkpoint and args.config:
        raise SelfsupError("give a checkpoint to start from or a config (-c) for a random initialisation, not both")
    if args.checkpoint:
        overrides = list(args.set) + [f"{key}={getattr(args, flag)}" for flag, key in
                                      (("data_root", "data.root"), ("device", "train.device"))
                                      if getattr(args, flag, None) is not None]
        return StartingPoint.load(args.checkpoint, None, overrides, quiet=args.quiet)
    return StartingPoint.load(None, _config_from_args(args), seed=args.seed, quiet=args.quiet)


def _add_start_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="a selfsup checkpoint or run directory to start from; "
                                                      "without it, -c CONFIG's backbone from random initialisation")
    _add_config_args(parser)
    parser.add_argument("--backbone-lr-scale", type=float,
                        help="trunk rate as a fraction of the head's (default 0.1 from a checkpoint, 1 from random "
                             "initialisation)")
    parser.add_argument("--quiet", action="store_true")


def _start_lr_scale(args: argparse.Namespace) -> float:
    if args.backbone_lr_scale is not None:
        return args.backbone_lr_scale
    return 0.1 if args.checkpoint else 1.0


def cmd_continual(args: argparse.Namespace) -> int:
    from .recipes.continual import ContinualSettings, continual

    start = _starting_point(args)
    settings = ContinualSettings(classes_per_task=args.classes_per_task, order=args.order,
                                 buffer_size=args.buffer_size, lwf_weight=args.lwf_weight,
                                 lwf_temperature=args.lwf_temperature, lwf_warmup_epochs=args.lwf_warmup_epochs)
    out_dir = Path(args.run_dir or f"runs/continual-{start.data['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = continual(start, out_dir, _classifier_training(args, _start_lr_scale(args)), strategies=args.strategies,
                       scenarios=args.scenarios, settings=settings, quiet=args.quiet)
    for row in result["summary"]:
        print(f"{row['scenario']:>18s}  {row['strategy']:<18s} average accuracy {row['average accuracy (%)']:6.2f}%  "
              f"forgetting {row['forgetting']:6.2f}  final row {row['final row']}")
    print(f"results: {out_dir / 'continual.md'}, matrices and plots in {out_dir}/<scenario>-<strategy>/")
    return 0


def cmd_semisup(args: argparse.Namespace) -> int:
    import yaml

    from .recipes.semisup import SemiSupervisedSettings, semisup, semisup_sweep

    bad = [item for item in args.option if "=" not in item]
    if bad:
        raise SelfsupError(f"--option takes KEY=VALUE pairs (e.g. threshold=0.9), got {' '.join(bad)}")
    options = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.option)}
    settings = SemiSupervisedSettings(method=args.semisup_method, weight=args.weight, rampup_steps=args.rampup_steps,
                                      ratio=args.ratio, eval_ema=args.eval_ema,
                                      scale_by_label_fraction=not args.no_label_scaling, options=options)
    start = _starting_point(args)
    training = _classifier_training(args, _start_lr_scale(args))
    seeds = args.seeds or [args.seed]
    if len(args.labels) == 1 and len(seeds) == 1:
        run_dir = args.run_dir or f"runs/semisup-{args.semisup_method}-{100 * args.labels[0]:g}pct-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = semisup(start, run_dir, training, settings, labels=args.labels[0], resume=args.resume,
                          quiet=args.quiet)
        print(f"{args.semisup_method} with {100 * args.labels[0]:g}% of the labels: test top-1 "
              f"{summary.get('test_top1', float('nan')):.2f}%  ({run_dir})")
        return 0
    out_dir = Path(args.run_dir or f"runs/semisup-{args.semisup_method}-sweep")
    report = semisup_sweep(start, out_dir, training, settings, fractions=args.labels, seeds=seeds, quiet=args.quiet)
    return _print_sweep(report, out_dir)


def cmd_multitask(args: argparse.Namespace) -> int:
    from .recipes.multitask import MultiTaskSettings, multitask_comparison

    bad = [item for item in args.weights if "=" not in item]
    if bad:
        raise SelfsupError(f"--weights takes TASK=WEIGHT pairs (e.g. coarse=0.5), got {' '.join(bad)}")
    try:
        weights = {task: float(value) for task, value in (item.split("=", 1) for item in args.weights)}
        coarse = [[int(c) for c in group.split(",")] for group in args.coarse] if args.coarse else None
    except ValueError as err:
        raise SelfsupError(f"--weights takes numbers and --coarse comma-separated class indices: {err}") from None
    settings = MultiTaskSettings(tasks=args.tasks, weights=weights, soft_weight=args.soft_weight, coarse=coarse)
    start = _starting_point(args)
    out_dir = Path(args.run_dir or f"runs/multitask-{start.data['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = multitask_comparison(start, out_dir, _classifier_training(args, _start_lr_scale(args)), settings,
                                  sharings=args.sharing, weightings=args.weighting,
                                  single_task=not args.no_single_task, quiet=args.quiet)
    for row in result["rows"]:
        scores = "  ".join(f"{task} {row[f'{task} top-1']:.2f}%" for task in args.tasks
                           if row.get(f"{task} top-1") is not None)
        print(f"{row['run']:<22s} {scores}")
    print(f"results: {out_dir / 'multitask.md'}, {out_dir / 'multitask.png'}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from .recipes.cluster import ClusterFitSettings, clusterfit

    run_dir = args.run_dir or f"runs/clusterfit-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = ClusterFitSettings(clusters=args.clusters, layer=args.layer, layer_dim=args.layer_dim,
                                  iterations=args.iterations, backend=args.backend,
                                  training=_classifier_training(args, 1.0))
    report = clusterfit(args.checkpoint, run_dir, settings, student=list(args.student), overrides=list(args.set),
                        quiet=args.quiet)
    for name, results in report["results"].items():
        print(f"{name}: kNN top-1 {results['knn']:.2f}%, linear top-1 {results['linear']:.2f}%")
    print(f"results: {Path(run_dir) / 'clusterfit.json'}")
    return 0


# ---------------------------------------------------------------- data

def cmd_tokens(args: argparse.Namespace) -> int:
    from .explore.tokens import tokens_for_checkpoints

    overrides = list(args.set or [])
    paths, results = tokens_for_checkpoints(args.checkpoint, overrides, Path(args.out) if args.out else None,
                                            args.images, args.quiet)
    for name, entry in results.items():
        print(f"{name}: median patch-token norm {entry['median_patch_norm']:.2f}, "
              f"outliers (> 2 x median) {100 * entry['outlier_share']:.2f}% of patches")
    print(f"attention maps: {paths['attention']}, token norms: {paths['norms']}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import DATASETS, USER_FORMATS, describe, find_root, load_dataset

    if args.action == "list":
        for name, spec in DATASETS.items():
            print(f"  {name:14s} {spec.description}")
        for name, text in USER_FORMATS.items():
            print(f"  {name:14s} {text}")
        return 0
    if args.name is None:
        raise SelfsupError(f"data {args.action} needs a dataset name (see `selfsup data list`)")
    if args.action == "prepare":
        if args.name in USER_FORMATS:
            raise SelfsupError(f"{args.name} data is read from data.root; nothing to prepare")
        root = find_root(args.name, args.root, download=args.download, quiet=args.quiet)
        for split in DATASETS[args.name].splits:
            if "+" not in split:
                load_dataset(args.name, split, root, quiet=True)  # proves the files are readable
        if not args.quiet:
            print(f"{args.name} is ready in {root}")
        return 0
    dataset = load_dataset(args.name, args.split, args.root, args.image_size, args.download, quiet=args.quiet)
    info = describe(dataset)
    print(json.dumps(info, indent=2))
    if args.grid:
        from .report import image_grid

        image_grid(dataset, args.grid)
        print(f"sample grid: {args.grid}")
    return 0


# ---------------------------------------------------------------- export, report, demo

def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_backbone

    card = export_backbone(args.checkpoint, args.out, library=args.format, onnx=args.onnx, network=args.network,
                           quiet=args.quiet)
    out = Path(args.out)
    check = card["recipe_check"]
    checked = (f"checked: the {args.format} model equals the encoder to {check['max_abs_diff']:.1e}"
               if "max_abs_diff" in check else f"recipe not run: {check['skipped']}")
    print(f"wrote {out} ({card['architecture']['library']} {card['architecture']['model']}, "
          f"{card['num_features']} features; {checked})\nwrote {out.with_suffix('.json')} (card: architecture, "
          "preprocessing, provenance, results, recipe)")
    if "onnx" in card:
        onnx = card["onnx"]
        onnx_file = out.parent / onnx["file"]  # the card names it relative to itself
        print(f"wrote {onnx_file} (opset {onnx['opset']}, dynamic batch; onnxruntime equals PyTorch to "
              f"{onnx['max_abs_diff']:.1e} at batch sizes {', '.join(map(str, onnx['checked_batch_sizes']))})")
    print(f"\nload it in plain {args.format} with (the card's \"recipe\"):\n")
    print(card["recipe"])
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .export import import_torchvision

    path = import_torchvision(args.weights, args.run_dir, _config_from_args(args), quiet=args.quiet)
    print(f"wrote {path}: evaluate, fine-tune, distill or cluster it like any selfsup run, e.g.\n"
          f"  selfsup eval all {args.run_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .explore import inspect_checkpoint
    from .report import check_reportable, read_run, whole_checkpoint, write_comparison, write_report

    runs = [read_run(path) for path in args.run_dirs]
    for run in runs:  # every folder checked before any work
        check_reportable(run)
    for run in runs:
        inspection, notes = None, []
        if args.inspect:
            folder = run.path / "checkpoints"
            chosen = next((folder / f"{name}.pt" for name in (args.checkpoint, "last")
                           if whole_checkpoint(folder / f"{name}.pt")), None)
            if chosen is None:
                notes.append(f"No usable checkpoint in {folder} (missing or damaged): no embeddings, retrievals or "
                             "confusion matrix; the curves and recorded results only.")
            else:
                if chosen.stem != args.checkpoint:
                    notes.append(f"checkpoints/{args.checkpoint}.pt is missing or damaged: inspected {chosen.name}.")
                try:
                    inspection = inspect_checkpoint(chosen, points=args.points, queries=args.queries,
                                                    neighbours=args.neighbours, probe=args.probe,
                                                    map_method=args.map, seed=args.seed, quiet=args.quiet)
                except SelfsupError as err:  # e.g. data without labels: the rest of the report still stands
                    notes.append(f"The encoder could not be inspected: {err}")
        for note in notes:
            print(f"{run.path}: {note}", file=sys.stderr)
        summary = write_report(run, inspection, notes)
        print(f"wrote {summary.parent / 'report.html'} and {summary}")
    if len(runs) > 1:
        out = Path(args.out) if args.out else runs[0].path.parent / "comparison"
        print(f"wrote {write_comparison(runs, out)} and {out / 'comparison.md'}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .report import find_runs, read_run, runs_table

    root = Path(args.dir)
    paths = find_runs(root)
    if not paths:
        print(f"no run directories under {root} (folders with metrics.jsonl or checkpoints/*.pt)")
        return 0
    records = [read_run(path, root) for path in paths]
    if args.status:
        records = [r for r in records if r.status == args.status]
    if args.json:
        print(json.dumps([{**r.row(), "path": str(r.path)} for r in records], indent=2))
    else:
        print(runs_table(records))
        counts = {status: sum(r.status == status for r in records) for status in ("finished", "resumable",
                                                                                 "interrupted")}
        print("\n" + ", ".join(f"{n} {status}" for status, n in counts.items() if n))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .explore import embed

    out = Path(args.out) if args.out else _default_index_dir(Path(args.checkpoint), args.images)
    meta = embed(args.checkpoint, args.images, out, split=args.split, root=args.root, batch_size=args.batch_size,
                 strict=args.strict, device=args.device, quiet=args.quiet)
    print(f"wrote {out / 'embeddings.npy'} ({meta['count']} x {meta['dim']}) and {out / 'index.json'}")
    if meta["skipped"]:
        print(f"skipped {len(meta['skipped'])} file(s) that could not be decoded (listed in index.json):",
              file=sys.stderr)
        for item in meta["skipped"][:10]:
            print(f"  {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"search it with: selfsup search {out} QUERY_IMAGE -k 10")
    return 0


def _default_index_dir(checkpoint: Path, images: str) -> Path:
    """``RUN/embeddings/<images>`` for a run's checkpoint; ``<images>-embeddings`` otherwise."""
    from .engine.checkpoint import run_dir_of

    name = Path(images).name or "images"
    run = run_dir_of(checkpoint)
    return run / "embeddings" / name if run is not None else Path(f"{name}-embeddings")


def cmd_search(args: argparse.Namespace) -> int:
    from .explore import search

    result = search(args.index, args.query, args.k, backend=args.backend, checkpoint_path=args.checkpoint,
                    sheet=args.sheet, device=args.device)
    for rank, (path, similarity) in enumerate(zip(result.paths, result.similarities), 1):
        print(f"{rank:3d}  {similarity:.4f}  {path}")
    if result.sheet is not None:
        print(f"contact sheet: {result.sheet}  (cosine similarity, exact search with {result.backend})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import find_config
    from .demo import run_demo

    run_demo(args.run_dir, find_config(args.config), list(args.set), minutes=args.minutes, quiet=args.quiet)
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup", description="Self-supervised visual representation learning: pretrain, evaluate, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("pretrain", help="pretrain an encoder with a self-supervised method",
                            epilog=EPILOG_PRETRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--method", help="method name (see --list-methods)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--minutes", type=float,
                   help="train.minutes: time the first steps and size the run to train for about this long")
    p.add_argument("--batch-size", type=int, help="train.batch_size (global, over all processes)")
    p.add_argument("--run-dir", help="where config, metrics, checkpoints and report go (default runs/<method>-<data>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from checkpoints/last.pt (start it if none exists)")
    p.add_argument("--list-methods", action="store_true", help="list the methods and their presets, then exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, then exit")
    p.add_argument("--network", choices=("student", "teacher"),
                   help="for methods with a momentum teacher: which network (default: the paper's, DINO's teacher)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = commands.add_parser("eval", help="evaluate checkpoints: kNN, linear probe, layer-wise probe, fine-tuning",
                            epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=["knn", "linear", "all", "layers", "finetune", "fewshot"],
                   help="knn: weighted kNN (k=200, T=0.07; and k=10, 20, 100, 200 side by side); linear: logistic regression on frozen features; "
                        "layers: linear probes on pooled conv1, res2..res5 features, one chart for all checkpoints; "
                        "finetune: train encoder + linear head on (a fraction of) the labels; fewshot: N-way "
                        "K-shot episodes on the test split, nearest class centroid of frozen features")
    p.add_argument("checkpoint", nargs="*", help="checkpoint files or run directories (their checkpoints/last.pt)")
    _add_config_args(p)
    p.add_argument("--pixels", action="store_true", help="evaluate raw pixels instead (the baseline)")
    p.add_argument("-k", "--k", type=_numbers(int), action="extend",
                   help="neighbours for the weighted kNN, several as -k 10,20 or -k 10 -k 20: a row each from one "
                        "neighbour search, the first kept as the 'knn' result (default: 200, NPID's, kept, and "
                        "10, 20, 100, 200, the values DINO reports, solo-learn's 20 among them, side by side)")
    p.add_argument("-T", "--temperature", type=_numbers(float), action="extend",
                   help="kNN vote temperature(s), several as -T 0.05,0.1 (default 0.07: DINO, solo-learn, NPID)")
    p.add_argument("--features", choices=["backbone", "embedding"],
                   help="eval.features: pooled backbone features (default), or the method's own embedding "
                        "(NPID/PIRL memory features, SimCLR projection)")
    p.add_argument("--bn-recalibration", choices=["auto", "on", "off"],
                   help="eval.bn_recalibration: re-estimate BatchNorm statistics on training images first "
                        "(auto: for tile-trained methods)")
    p.add_argument("--out", help="output folder (default: RUN/eval of the first checkpoint)")
    p.add_argument("--dim", type=int, nargs="+", default=[2048],
                   help="layers: pool every stage to about this many features (default 2048); several sizes "
                        "(e.g. --dim 1024 2048 4096) give a table and a chart per size, from one forward pass")
    p.add_argument("--train-size", type=int,
                   help="layers: probe on a class-balanced subset of this many training images (faster)")
    group = p.add_argument_group("fewshot")
    group.add_argument("--ways", type=int, help="classes per episode (eval.fewshot_ways, default 5)")
    group.add_argument("--shots", type=int, nargs="+", help="labelled images per class, one result each "
                                                            "(eval.fewshot_shots, default 1 5)")
    group.add_argument("--queries", type=int, help="query images per class (default 15)")
    group.add_argument("--episodes", type=int, help="episodes (default 600)")
    group.add_argument("--classes", type=int, nargs="+",
                       help="draw episodes from these class indices only (held-out classes); default all")
    group = p.add_argument_group("finetune")
    group.add_argument("--labels", type=float, nargs="+", default=[1.0],
                       help="fraction(s) of the training labels, class-balanced by the seed (default 1.0; e.g. "
                            "--labels 0.01 0.05 0.1 0.2 1)")
    group.add_argument("--seeds", type=int, nargs="+",
                       help="repeat every fraction over these seeds (labels and training), mean +- std in "
                            "RUN_DIR/finetune.md; a killed sweep continues where it was")
    group.add_argument("--head-layers", type=int, default=0,
                       help="keep this many hidden layers of the projection head on the trunk (SimCLR v2: 1, "
                            "the middle of its 3-layer head); default 0, the backbone's output")
    _add_training_args(group, epochs=30, lr=0.1)
    group.add_argument("--backbone-lr-scale", type=float, default=0.1,
                       help="trunk learning rate as a fraction of the head's (default 0.1)")
    group.add_argument("--layer-modes", nargs="+", default=[], metavar="STAGE=MODE",
                       help="transfer mode per trunk stage (conv1, res2..res5): frozen, finetune (default, at "
                            "--backbone-lr-scale) or retrain (re-initialised, at the head's rate), e.g. "
                            "--layer-modes conv1=frozen res2=frozen res5=retrain")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("supervised", help="train a config's backbone from random initialisation on (a fraction "
                                               "of) the labels: the baseline, or a supervised N_pre",
                            epilog=EPILOG_SUPERVISED, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--label-noise", type=float, help="data.label_noise: move this fraction of the training labels "
                                                     "to another class (ClusterFit's study); tests stay clean")
    p.add_argument("--labels", type=float, nargs="+", default=[1.0],
                   help="fraction(s) of the training labels, class-balanced by the seed (default 1.0)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="repeat every fraction over these seeds, mean +- std in RUN_DIR/finetune.md")
    _add_training_args(p, epochs=30, lr=0.1)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_supervised)

    p = commands.add_parser("distill", help="train a student on a fine-tuned teacher's predictions over "
                                            "unlabelled images (SimCLR v2's third stage)",
                            epilog=EPILOG_DISTILL, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", help="a fine-tuned checkpoint or run directory (selfsup eval finetune)")
    p.add_argument("--student", action="append", default=[], metavar="backbone.KEY=VALUE",
                   help="the student's backbone, as changes to the teacher's (e.g. backbone.width=16); "
                        "default: the teacher's backbone, fresh")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of both (default 1)")
    p.add_argument("--teacher-weight", type=float, default=1.0,
                   help="lambda: weight of the teacher term; 1 - lambda weighs cross-entropy on labels (default 1: "
                        "no labels used)")
    p.add_argument("--labels", type=float, default=0.0,
                   help="fraction of the training labels the label term may use (default 0)")
    _add_new_network_args(p, "the teacher's")
    p.set_defaults(func=cmd_distill)

    p = commands.add_parser("continual", help="learn a sequence of tasks (split classes) with a continual strategy: "
                                              "accuracy matrix, forgetting, plot", epilog=EPILOG_CONTINUAL,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_start_args(p)
    p.add_argument("--strategies", nargs="+", default=["feature-extraction", "finetune", "lwf", "rehearsal", "joint"],
                   metavar="NAME", help="feature-extraction, finetune, lwf, rehearsal, joint (default: all)")
    p.add_argument("--scenarios", nargs="+", default=["task", "class"], metavar="NAME",
                   help="task (a head per task, task known at test) and/or class (one head over every class seen)")
    p.add_argument("--classes-per-task", type=int, default=2, help="default 2 (split Fashion-MNIST: 5 tasks)")
    p.add_argument("--order", type=int, nargs="+", help="class order the tasks are cut from (default 0..K-1)")
    p.add_argument("--buffer-size", type=int, default=200, help="rehearsal: images kept over the classes seen "
                                                                "(default 200)")
    p.add_argument("--lwf-weight", type=float, default=1.0, help="LwF's lambda_o (default 1)")
    p.add_argument("--lwf-temperature", type=float, default=2.0, help="LwF's T (default 2)")
    p.add_argument("--lwf-warmup-epochs", type=float, default=1.0,
                   help="LwF: epochs of each new task with the trunk frozen, only the head training (default 1)")
    _add_training_args(p, epochs=3, lr=0.02, label_smoothing=False)
    p.set_defaults(func=cmd_continual)

    p = commands.add_parser("semisup", help="semi-supervised training on a label fraction and every unlabelled "
                                            "image (FixMatch, Mean Teacher, MixMatch, ...)", epilog=EPILOG_SEMISUP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_start_args(p)
    p.add_argument("--method", dest="semisup_method", default="fixmatch", help="default fixmatch (see below)")
    p.add_argument("--labels", type=float, nargs="+", default=[0.01],
                   help="fraction(s) of the training labels, class-balanced by the seed (default 0.01)")
    p.add_argument("--seeds", type=int, nargs="+", help="repeat every fraction over these seeds (mean +- std)")
    p.add_argument("--weight", type=float, help="weight of the unlabelled loss (default: the method's)")
    p.add_argument("--rampup-steps", type=int, help="optimiser steps over which that weight ramps up (default: the "
                                                    "method's paper's: 40,000 for the Pi-model, temporal ensembling "
                                                    "and Mean Teacher, 16,384 for MixMatch; a shorter run warns)")
    p.add_argument("--eval-ema", type=float, help="evaluate a moving average of the weights with this decay (default: "
                                                  "0.999 for FixMatch and MixMatch, as their papers; 0: the trained "
                                                  "network)")
    p.add_argument("--no-label-scaling", action="store_true",
                   help="Pi-model, temporal ensembling: do not scale the weight by the labelled share M/N (their "
                        "reference code does)")
    p.add_argument("--ratio", type=float, help="mu: unlabelled images per labelled one in a batch (default: the "
                                               "method's, 7 for FixMatch)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the method, e.g. threshold=0.9 (FixMatch, UDA, pseudo-label), ema=0.999 "
                        "(Mean Teacher), alpha=0.6 (temporal ensembling), temperature=0.5 (MixMatch, UDA)")
    _add_training_args(p, epochs=10, lr=0.03, label_smoothing=False)
    p.set_defaults(func=cmd_semisup)

    p = commands.add_parser("multitask", help="multi-task learning: hard / soft sharing, cross-stitch units, "
                                              "fixed or time-varying task weights", epilog=EPILOG_MULTITASK,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_start_args(p)
    p.add_argument("--tasks", nargs="+", default=["class", "coarse"], help="class, coarse, rotation (default "
                                                                           "class coarse; the first is the main one)")
    p.add_argument("--sharing", nargs="+", default=["hard", "soft", "cross-stitch"], metavar="MODE",
                   help="hard, soft, cross-stitch (default: all three)")
    p.add_argument("--weighting", nargs="+", default=["fixed"], metavar="NAME",
                   help="fixed (--weights) and/or dwa (dynamic weight average, time-varying)")
    p.add_argument("--weights", nargs="+", default=[], metavar="TASK=W", help="fixed task weights (default 1 each)")
    p.add_argument("--soft-weight", type=float, default=0.01,
                   help="soft sharing: weight of the L2 penalty between the trunks (default 0.01)")
    p.add_argument("--coarse", nargs="+", metavar="I,J,...", help="the coarse task's groups of class indices "
                                                                 "(known for fashion_mnist and cifar10)")
    p.add_argument("--no-single-task", action="store_true", help="skip the single-task baselines")
    _add_training_args(p, epochs=5, lr=0.1, label_smoothing=False)
    p.set_defaults(func=cmd_multitask)

    p = commands.add_parser("cluster", help="ClusterFit: cluster a pretrained network's features, train a fresh "
                                             "network on the clusters, evaluate both", epilog=EPILOG_CLUSTER,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="N_pre: any selfsup checkpoint or run directory (pretrained or fine-tuned)")
    p.add_argument("--clusters", type=int, default=200, help="K (default 200; the paper's 16,000 is for ImageNet)")
    p.add_argument("--layer", default="output",
                   help="features to cluster: output (default), or a stage conv1, res2 .. res5 (pooled)")
    p.add_argument("--layer-dim", type=int, default=2048, help="a stage is pooled to about this many features")
    p.add_argument("--iterations", type=int, default=50, help="k-means iterations (default 50)")
    p.add_argument("--backend", choices=["auto", "torch", "faiss"], default="auto",
                   help="k-means: faiss when installed (auto), or the exact torch implementation")
    p.add_argument("--student", action="append", default=[], metavar="backbone.KEY=VALUE",
                   help="N_cf's backbone as changes to N_pre's (default: the same backbone, fresh)")
    _add_new_network_args(p, "N_pre's")
    p.set_defaults(func=cmd_cluster)

    p = commands.add_parser("tokens", help="ViT checkpoints: [CLS] attention maps and token-norm histograms "
                                           "(with and without registers)")
    p.add_argument("checkpoint", nargs="+", help="checkpoint files or run directories of ViT runs")
    p.add_argument("--images", type=int, default=8, help="test images to draw (default 8)")
    p.add_argument("--out", help="output folder (default: RUN/eval/tokens of the first checkpoint)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. data.root=...")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_tokens)

    p = commands.add_parser("data", help="list, prepare (find or download) or inspect datasets")
    p.add_argument("action", choices=["list", "prepare", "inspect"])
    p.add_argument("name", nargs="?", help="dataset name (see `selfsup data list`)")
    p.add_argument("--root", help="folder holding the dataset (or to download into)")
    p.add_argument("--split", default="train")
    p.add_argument("--image-size", type=int, help="resize (imagefolder default: 64)")
    p.add_argument("--download", action="store_true", help="fetch from the official URL when not found")
    p.add_argument("--grid", help="write a PNG grid of sample images per class (inspect)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_data)

    p = commands.add_parser("export", help="write the encoder as weights for plain torchvision or timm (ResNet and "
                                            "ViT), a JSON card, and optionally ONNX checked by onnxruntime")
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--out", default="backbone.safetensors",
                   help=".safetensors (default) or .pt: the target model's state dict; the card goes to OUT.json")
    p.add_argument("--format", default="torchvision", choices=("torchvision", "timm"),
                   help="the library whose model loads the weights (default torchvision; ViTs with registers: timm)")
    p.add_argument("--onnx", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the encoder as ONNX (default path: OUT with .onnx), with a dynamic batch, and "
                        "check it with onnxruntime against PyTorch (needs pip install 'selfsup[export]')")
    p.add_argument("--network", choices=("student", "teacher"),
                   help="for methods with a momentum teacher: which network (default: the paper's, DINO's teacher)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("import", help="a torchvision ResNet's weights (.pth/.pt/.safetensors) as a selfsup "
                                            "checkpoint, for eval, finetune, distill and cluster")
    p.add_argument("weights", help="the state dict of a torchvision resnet18/34/50 (fc is dropped)")
    p.add_argument("--run-dir", required=True, help="where checkpoints/last.pt is written")
    _add_config_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("report", help="an HTML page (and markdown) of a run, or a comparison of several",
                            description="For each run directory: RUN/report/report.html (self-contained: open it "
                                        "from disk) and summary.md with the curves, results, a 2-D map of the "
                                        "test embeddings, nearest-neighbour retrievals, the linear probe's "
                                        "confusion matrix, the layer-wise chart, config and environment. With "
                                        "several run directories, also a comparison page (--out).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder of the comparison page (default: <first run's parent>/comparison)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint to inspect")
    p.add_argument("--no-inspect", dest="inspect", action="store_false",
                   help="curves and recorded results only: no features, map, retrievals or probe (fast)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="do not fit the linear probe for the confusion matrix when eval/results.json has none")
    p.add_argument("--map", default="auto", choices=["auto", "umap", "tsne"],
                   help="2-D map: UMAP when umap-learn is installed (auto), else t-SNE (scikit-learn)")
    p.add_argument("--points", type=int, default=1000, help="test images on the map (default 1000)")
    p.add_argument("--queries", type=int, default=10, help="retrieval queries, one class after another (default 10)")
    p.add_argument("--neighbours", type=int, default=8, help="neighbours shown per query (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_report)

    p = commands.add_parser("runs", help="a table of the runs under a folder: method, data, epochs, kNN, linear, "
                                         "status (finished / resumable / interrupted)")
    p.add_argument("dir", nargs="?", default="runs", help="folder to scan, recursively (default: runs)")
    p.add_argument("--status", choices=["finished", "resumable", "interrupted"], help="only runs in this state")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_runs)

    p = commands.add_parser("embed", help="an encoder's embeddings of a folder of images (or a dataset split), "
                                          "as an index for selfsup search")
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("images", help="folder of images (searched recursively) or a dataset name (see selfsup data list)")
    p.add_argument("--out", help="index folder (default: RUN/embeddings/<images>)")
    p.add_argument("--split", default="test", help="split of a dataset name (default test)")
    p.add_argument("--root", help="folder holding the dataset")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--strict", action="store_true", help="stop at the first image that cannot be decoded "
                                                         "(default: skip it and list it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = commands.add_parser("search", help="nearest neighbours of an image in an index from selfsup embed")
    p.add_argument("index", help="index folder written by selfsup embed")
    p.add_argument("query", help="query image (any size: preprocessed like the index), or a .npy feature vector")
    p.add_argument("-k", type=int, default=10, help="neighbours (default 10)")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"],
                   help="exact cosine search: faiss when installed (auto), else torch")
    p.add_argument("--checkpoint", help="the index's checkpoint at another path (must hold the same weights)")
    p.add_argument("--sheet", help="contact sheet PNG (default: INDEX/search-<query>.png)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_search)

    p = commands.add_parser("demo", help="pretrain SimCLR on Fashion-MNIST for a few minutes, evaluate, compare")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--minutes", type=float, default=5.0,
                   help="time budget of the whole demo (default 5): the evaluation's cost is estimated and "
                        "pretraining gets the rest, sized by timing its first steps; 0 trains the preset's epochs")
    p.add_argument("-c", "--config", default="demo", help="preset to run (default: the shipped demo preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine.runtime import record_command

    record_command(["selfsup", *(sys.argv[1:] if argv is None else argv)])  # every run records this command
    try:
        return args.func(args)
    except SelfsupError as err:
        from .engine import dist

        prefix = f"[rank {dist.rank()}] " if dist.world_size() > 1 else ""
        print(f"{prefix}error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted. Continue a run with the same command and --resume (a fine-tuning sweep "
              "continues by itself).", file=sys.stderr)
        return 130
    finally:
        from .engine import dist

        record_command(None)
        dist.destroy()


if __name__ == "__main__":
    sys.exit(main())
