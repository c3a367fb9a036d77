"""Commands that train a fresh network on labels: ``selfsup supervised`` (the labels themselves),
``selfsup distill`` (a fine-tuned teacher's predictions) and ``selfsup cluster`` (ClusterFit's
pseudo-labels)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (COUNT, FRACTION, LABEL_FRACTION, POSITIVE, POSITIVE_INT, add_config_args,
                     add_training_args, classifier_training, config_from_args, default_run_dir, one_run_or_sweep)

EPILOG_SUPERVISED = """\
examples:
  selfsup supervised -c simclr_fashion_mnist --set backbone.width=16 --epochs 10 --run-dir runs/sup
  selfsup supervised -c simclr_fashion_mnist --label-noise 0.5 --run-dir runs/sup-noise50   # a noisy N_pre
  selfsup cluster runs/sup-noise50 --clusters 100 --run-dir runs/cf-noise50                  # ClusterFit from it
  selfsup supervised -c selfie_fashion_mnist --labels 0.05 0.1 0.2 1 --seeds 0 1 2 3 4 --steps 300
"""

EPILOG_DISTILL = """\
examples (SimCLR v2: pretrain, fine-tune on 10% of the labels, distill on every image):
  selfsup pretrain -c simclr_fashion_mnist --set method.proj_layers=3 --run-dir runs/simclr3
  selfsup eval finetune runs/simclr3 --labels 0.1 --head-layers 1 --run-dir runs/simclr3-ft
  selfsup distill runs/simclr3-ft --run-dir runs/simclr3-student                 # same backbone
  selfsup distill runs/simclr3-ft --student backbone.width=16 --run-dir runs/small-student
"""

EPILOG_CLUSTER = """\
examples:
  selfsup cluster runs/rotation --clusters 200 --epochs 10 --run-dir runs/clusterfit-rot
  selfsup cluster runs/rotation --layer res4 --student backbone.width=16 --run-dir runs/cf-res4
  selfsup cluster runs/clusterfit-rot/ncf ...      # N_cf is a checkpoint like any other
Run the same command again after a kill: finished stages (features, clusters) are kept and the
training of N_cf resumes from its last checkpoint.
"""


def supervised(args: argparse.Namespace) -> int:
    from ..recipes.finetune import supervised as train_supervised
    from ..recipes.finetune import supervised_sweep

    config = config_from_args(args)
    settings = classifier_training(args, "supervised")
    name = f"supervised-{config.data.name}" + (f"-noise{100 * config.data.label_noise:g}" if config.data.label_noise
                                               else "")
    return one_run_or_sweep(
        args, "trained from random initialisation on {pct}% of the labels",
        run_dir=lambda: default_run_dir(name), sweep_dir=lambda: f"runs/{name}-sweep",
        one=lambda run_dir, labels: train_supervised(config, run_dir, settings, labels=labels, resume=args.resume,
                                                     quiet=args.quiet),
        sweep=lambda out_dir, seeds: supervised_sweep(config, out_dir, settings, fractions=args.labels, seeds=seeds,
                                                      quiet=args.quiet))


def distill(args: argparse.Namespace) -> int:
    from ..recipes.distill import distill as run_distillation

    run_dir = args.run_dir or default_run_dir("distill")
    summary = run_distillation(args.teacher, run_dir, classifier_training(args, "distill"), student=list(args.student),
                               temperature=args.temperature, teacher_weight=args.teacher_weight, labels=args.labels,
                               overrides=list(args.set), resume=args.resume, quiet=args.quiet)
    print(f"student test top-1 {summary.get('test_top1', float('nan')):.2f}%  ({run_dir})")
    return 0


def cluster(args: argparse.Namespace) -> int:
    from ..recipes.cluster import ClusterFitSettings, clusterfit

    run_dir = args.run_dir or default_run_dir("clusterfit")
    settings = ClusterFitSettings(clusters=args.clusters, layer=args.layer, layer_dim=args.layer_dim,
                                  iterations=args.iterations, backend=args.backend,
                                  training=classifier_training(args, "cluster"))
    report = clusterfit(args.checkpoint, run_dir, settings, student=list(args.student), overrides=list(args.set),
                        quiet=args.quiet)
    for name, results in report["results"].items():
        print(f"{name}: kNN top-1 {results['knn']:.2f}%, linear top-1 {results['linear']:.2f}%")
    print(f"results: {Path(run_dir) / 'clusterfit.json'}")
    return 0


def add_new_network_args(parser: argparse.ArgumentParser, strategy: str, source: str) -> None:
    """A fresh network trained from a checkpoint's config (distill, cluster)."""
    add_training_args(parser, strategy)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of {source} config, e.g. data.root=...")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--quiet", action="store_true")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("supervised", help="train a config's backbone from random initialisation on (a fraction "
                                               "of) the labels: the baseline, or a supervised N_pre",
                            epilog=EPILOG_SUPERVISED, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--label-noise", type=FRACTION, help="data.label_noise: move this fraction of the training labels "
                                                     "to another class (ClusterFit's study); tests stay clean")
    p.add_argument("--labels", type=LABEL_FRACTION, nargs="+", default=[1.0],
                   help="fraction(s) of the training labels, class-balanced by the seed (default 1.0)")
    p.add_argument("--seeds", type=COUNT, nargs="+",
                   help="repeat every fraction over these seeds, mean +- std in RUN_DIR/finetune.md")
    add_training_args(p, "supervised")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=supervised)

    p = commands.add_parser("distill", help="train a student on a fine-tuned teacher's predictions over "
                                            "unlabelled images (SimCLR v2's third stage)",
                            epilog=EPILOG_DISTILL, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", help="a fine-tuned checkpoint or run directory (selfsup eval finetune)")
    p.add_argument("--student", action="append", default=[], metavar="backbone.KEY=VALUE",
                   help="the student's backbone, as changes to the teacher's (e.g. backbone.width=16); "
                        "default: the teacher's backbone, fresh")
    p.add_argument("--temperature", type=POSITIVE, default=1.0, help="softmax temperature of both (default 1)")
    p.add_argument("--teacher-weight", type=FRACTION, default=1.0,
                   help="lambda: weight of the teacher term; 1 - lambda weighs cross-entropy on labels (default 1: "
                        "no labels used)")
    p.add_argument("--labels", type=FRACTION, default=0.0,
                   help="fraction of the training labels the label term may use (default 0)")
    add_new_network_args(p, "distill", "the teacher's")
    p.set_defaults(func=distill)

    p = commands.add_parser("cluster", help="ClusterFit: cluster a pretrained network's features, train a fresh "
                                             "network on the clusters, evaluate both", epilog=EPILOG_CLUSTER,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="N_pre: any selfsup checkpoint or run directory (pretrained or fine-tuned)")
    p.add_argument("--clusters", type=POSITIVE_INT, default=200, help="K (default 200; the paper's 16,000 is for ImageNet)")
    p.add_argument("--layer", default="output",
                   help="features to cluster: output (default), or a stage conv1, res2 .. res5 (pooled)")
    p.add_argument("--layer-dim", type=POSITIVE_INT, default=2048, help="a stage is pooled to about this many features")
    p.add_argument("--iterations", type=POSITIVE_INT, default=50, help="k-means iterations (default 50)")
    p.add_argument("--backend", choices=["auto", "torch", "faiss"], default="auto",
                   help="k-means: faiss when installed (auto), or the exact torch implementation")
    p.add_argument("--student", action="append", default=[], metavar="backbone.KEY=VALUE",
                   help="N_cf's backbone as changes to N_pre's (default: the same backbone, fresh)")
    add_new_network_args(p, "cluster", "N_pre's")
    p.set_defaults(func=cluster)
