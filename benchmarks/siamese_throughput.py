"""End-to-end training throughput of SimCLR, MoCo, BYOL and DINO: selfsup against lightly's
documented pipelines, around the same backbone, measured side by side in one process.

selfsup: ``Engine.train_step`` of each method's Fashion-MNIST preset, fed by the in-memory
loader (uint8 batch -> views on the device -> forward/backward/step -> teacher/queue update).
lightly (``pip install -e .[bench]``): the recipe of lightly's examples for the same method
(:mod:`lightly_recipes`): a Dataset of PIL images with the method's lightly transform
(``SimCLRTransform``, ``MoCoV2Transform``, ``BYOLTransform``, ``DINOTransform``, at the preset's
views), a DataLoader with ``--lightly-workers`` workers, lightly's heads and loss, momentum
updates with ``update_momentum``, a plain loop. Both sides use the same ResNet-18 (small
stem, ``--width``) and the preset's batch size, head sizes, queue size and crop counts; DINO
runs on the ResNet here (its preset's ViT would measure a different network on each side
only if lightly's ViT were used; the ResNet keeps the comparison to the pipeline).

The variants run interleaved for several rounds (these machines drift); every ratio is
taken between variants of the same round.

    python benchmarks/siamese_throughput.py                          # all four, width 16
    python benchmarks/siamese_throughput.py --methods moco --rounds 2   # quicker
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
from pathlib import Path

import torch

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.recipes.pretrain import Pretraining
from selfsup.files import write_json
from throughput import cpu_flags, interleaved_rounds, ours_end_to_end, scratch_folder, spread

ROOT = Path(__file__).resolve().parents[1]


def make_trainer(method: str, args: argparse.Namespace, run_dir: Path) -> Pretraining:
    overrides = ["train.knn_every=0", "train.online_probe=false", "train.log_every=1000000", "backbone.name=resnet18",
                 f"backbone.width={args.width}", "backbone.patch_size=null", "backbone.registers=0", "backbone.drop_path=0.0",
                 f"train.device={args.device}", "train.precision=fp32"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    return Pretraining(resolve(apply_overrides(read_yaml(find_config(f"{method}_fashion_mnist")), overrides)),
                       run_dir, quiet=True)


def lightly_pipeline(method: str, trainer: Pretraining, workers: int):  # noqa: ANN201
    """A step of lightly's recipe for ``method``; None when lightly is absent."""
    try:
        from lightly_recipes import LightlyMethod, PILImages, lightly_transform
    except ImportError:
        return None
    info = trainer.data_info
    transform = lightly_transform(method, trainer.config, info.image_size, info.mean, info.std)
    batch_size = trainer.config.train.batch_size
    loader = torch.utils.data.DataLoader(PILImages(trainer.splits.train.images, transform), batch_size=batch_size,
                                         shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    device = trainer.device
    model = LightlyMethod(method, copy.deepcopy(trainer.method.backbone), trainer.config.method,
                          total_steps=10 ** 6, steps_per_epoch=len(loader)).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.06, momentum=0.9)
    batches, steps = iter(()), 0

    def step() -> int:
        nonlocal batches, steps
        try:
            views = next(batches)
        except StopIteration:
            batches = iter(loader)
            views = next(batches)
        loss = model.loss([v.to(device) for v in views], steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step(steps)
        steps += 1
        return batch_size

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr", "moco", "byol", "dino"])
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = torchvision's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lightly-workers", type=int, nargs="*", default=[2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "siamese-throughput.json"))
    args = parser.parse_args()

    from selfsup.engine.runtime import pick_device

    scratch = scratch_folder()
    variants, batch_sizes = {}, {}
    for method in args.methods:
        trainer = make_trainer(method, args, scratch / method)
        batch_sizes[method] = trainer.config.train.batch_size
        variants[f"{method}: selfsup"] = ours_end_to_end(trainer)
        for workers in args.lightly_workers:
            step = lightly_pipeline(method, trainer, workers)
            if step is not None:
                variants[f"{method}: lightly workers={workers}"] = step
    rounds = interleaved_rounds(variants, args.rounds, args.steps, args.warmup)
    median = {name: round(statistics.median(values), 1) for name, values in rounds.items()}
    ratios = {}
    for name in rounds:
        method, _, side = name.partition(": ")
        if side.startswith("lightly"):
            ours = rounds[f"{method}: selfsup"]
            ratios[f"{method}: selfsup / {side}"] = spread([a / b for a, b in zip(ours, rounds[name])])
    device = pick_device(args.device)
    report = {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": describe_device(device), "cpu_flags": cpu_flags(), "versions": library_versions(),
              "width": args.width, "batch_sizes": batch_sizes, "steps": args.steps, "rounds": args.rounds,
              "img_per_s": median, "all_rounds": rounds, "ratios": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), report)
    print(f"\n{report['machine']} (CPU flags: {' '.join(report['cpu_flags'])}), ResNet-18 width {args.width}\n")
    print("| method | batch | selfsup img/s | lightly img/s | selfsup / lightly (median [min, max] over rounds) |")
    print("|---|---|---|---|---|")
    for name, ratio in ratios.items():
        method, _, rest = name.partition(": ")
        side = rest.split(" / ")[1]
        print(f"| {method} ({side}) | {batch_sizes[method]} | {median[f'{method}: selfsup']} | {median[f'{method}: {side}']} | "
              f"{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}] |")


if __name__ == "__main__":
    main()
