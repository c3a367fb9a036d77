"""Training throughput of SimCLR, measured side by side in one process.

For each precision (fp32; bf16 autocast), in the memory layout selfsup picks for it (fp32 on
a CPU: measured at start-up), it measures images/s of
  * end to end: the production path, ``Engine.train_step`` fed by the in-memory loader
    (uint8 batch -> kornia views on the device -> forward/backward/step), and
  * model only: the same ``train_step`` replaying pre-made view tensors (no data, no
    augmentation): the compute limit of this model on this machine;
and, when the ``lightly`` package is installed (``pip install -e .[bench]``), the same
network (ResNet-18 small stem + the same projection head, NT-Xent) through lightly's
standard pipeline: a torch Dataset of PIL images with ``SimCLRTransform``, a DataLoader
with workers, lightly's ``NTXentLoss``, a plain loop as in lightly's examples: once as
lightly documents it (fp32, default memory format), and once with selfsup's precision and
memory format, which isolates the data pipeline from the arithmetic.

Only precisions the machine runs natively are measured (bf16 needs AVX-512 BF16 / AMX on a
CPU, or a GPU); the others are skipped with the reason. The variants run interleaved
(A B C ... A B C ...) for several rounds; each reports its median, and every ratio is taken
between variants of the same round (paired), with its spread over rounds, since these
machines drift by 10-20% over minutes.

    python benchmarks/throughput.py                       # Fashion-MNIST, batch 256, ResNet-18 width 32
    python benchmarks/throughput.py --setting stl10-like --width 64   # 96 px colour images, ImageNet stem
    python benchmarks/throughput.py --steps 2 --rounds 2 --batch-size 128   # quicker

Settings: ``fashion-mnist`` (28 px grayscale, small stem, configs/simclr_fashion_mnist.yaml)
and ``stl10-like`` (5,000 random 96 px RGB images in memory, standing in for STL-10, with
configs/simclr_stl10.yaml: ImageNet stem, full colour jitter, grayscale, blur). Pixel
content does not change the cost of either pipeline.
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine import to_channels_last
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.recipes.pretrain import Pretraining

ROOT = Path(__file__).resolve().parents[1]


def make_trainer(args: argparse.Namespace, precision: str, run_dir: Path) -> Pretraining:
    preset = "simclr_fashion_mnist" if args.setting == "fashion-mnist" else "simclr_stl10"
    raw = read_yaml(find_config(preset))
    overrides = [f"train.batch_size={args.batch_size}", f"train.precision={precision}", "train.knn_every=0", "train.online_probe=false",
                 f"backbone.width={args.width}", f"train.device={args.device}", "train.log_every=1000000"]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.setting == "stl10-like":
        overrides += ["data.name=tensors", f"data.root={stl10_like(run_dir.parent)}", "data.train_split=train"]
    return Pretraining(resolve(apply_overrides(raw, overrides)), run_dir, quiet=True)


def stl10_like(folder: Path) -> Path:
    path = folder / "stl10-like.npz"
    if not path.is_file():
        import numpy as np

        rng = np.random.default_rng(0)
        np.savez(path, images=rng.integers(0, 256, (5000, 96, 96, 3), dtype=np.uint8),
                 targets=rng.integers(0, 10, 5000))
    return path


def timed(steps: int, warmup: int, step_fn) -> float:  # noqa: ANN001
    """Images/s over ``steps`` calls of ``step_fn`` after ``warmup`` calls (it returns the batch size)."""
    for _ in range(warmup):
        step_fn()
    synchronize()
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step_fn()
    synchronize()
    return images / (time.perf_counter() - start)


def interleaved_rounds(variants: dict, rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    """Images/s of every variant (a step function returning its batch size) in ``rounds`` rounds
    run A B C ... A B C ..., so that drift hits all alike; ``warmup`` untimed steps each first."""
    for step in variants.values():
        for _ in range(warmup):
            step()
    results: dict[str, list[float]] = {name: [] for name in variants}
    width = max(map(len, variants))
    for index in range(rounds):
        for name, step in variants.items():
            results[name].append(timed(steps, 0, step))
            print(f"round {index + 1}: {name:{width}s} {results[name][-1]:7.1f} img/s", flush=True)
    return results


def scratch_folder() -> Path:
    """A temporary folder for a benchmark's data and runs, removed when the benchmark exits (however it ends
    short of a kill): a check repeated through a day must not fill the disk (32 left-behind gpu_checks took 11 GB)."""
    folder = Path(tempfile.mkdtemp(prefix="selfsup-bench-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def cpu_flags() -> list[str]:
    """The CPU features that decide which precision runs natively (empty off Linux)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags)


def native_precisions(device: torch.device) -> tuple[list[str], list[str]]:
    """(precisions to measure, skipped ones with the reason)."""
    from selfsup.engine.runtime import cpu_supports_bf16

    if device.type == "cuda" or cpu_supports_bf16():
        return ["fp32", "bf16"], []
    return ["fp32"], ["bf16: this CPU has no native bf16 (no avx512_bf16 / amx); PyTorch emulates it there, "
                      "several times slower than fp32, so it is not a setting anyone would train with"]


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ours_end_to_end(trainer: Pretraining):  # noqa: ANN201
    batches = iter(())

    def step() -> int:
        nonlocal batches
        try:
            images, targets, index = next(batches)
        except StopIteration:
            trainer.loader.set_epoch(trainer.engine.step)
            batches = trainer.loader.iterate()
            images, targets, index = next(batches)
        trainer.engine.train_step(images, targets, index)
        return len(images)

    return step


class ReplayViews(nn.Module):
    """The same pre-made views for every batch: what the model costs without the augmentations."""

    def __init__(self, views: list[torch.Tensor]) -> None:
        super().__init__()
        self.fixed = views

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.fixed


def ours_model_only(trainer: Pretraining):  # noqa: ANN201
    images, targets, index = next(trainer.loader.iterate())
    with torch.no_grad():
        views = trainer.method.views(images)
    if trainer.channels_last:
        views = to_channels_last(views)
    replay = ReplayViews(views)
    real_views = trainer.method.views

    def step() -> int:
        trainer.method.views = replay  # swapped in only for this variant's steps
        try:
            trainer.engine.train_step(images, targets, index)
        finally:
            trainer.method.views = real_views
        return len(images)

    return step


def lightly_pipeline(trainer: Pretraining, args: argparse.Namespace, workers: int, precision: str,  # noqa: ANN201
                     channels_last: bool):
    """lightly's documented SimCLR recipe around the same network; None when lightly is absent."""
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError:
        return None
    from PIL import Image
    from torch import nn

    dataset = trainer.splits.train
    mean, std = trainer.data_info.mean, trainer.data_info.std
    views = trainer.config.views["augment"]
    jitter = views["jitter"]
    transform = SimCLRTransform(
        input_size=dataset.image_size, cj_prob=views["jitter_p"], cj_strength=0.5, cj_bright=jitter[0] / 0.5,
        cj_contrast=jitter[1] / 0.5, cj_sat=jitter[2] / 0.5, cj_hue=jitter[3] / 0.5, min_scale=views["crop_scale"][0],
        random_gray_scale=views["grayscale_p"], gaussian_blur=views["blur_p"], normalize={"mean": mean, "std": std})

    class PILDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int):  # noqa: ANN204
            pixels = dataset.images[i].permute(1, 2, 0).numpy()
            image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
            return transform(image), int(dataset.targets[i])

    loader = torch.utils.data.DataLoader(PILDataset(), batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    device = trainer.device
    backbone = trainer.method.backbone  # the same network as ours, fresh head and optimiser
    head = SimCLRProjectionHead(backbone.num_features, trainer.config.method["proj_hidden_dim"],
                                trainer.config.method["proj_dim"])
    model = nn.Sequential(backbone, head).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=trainer.config.method["temperature"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    batches = iter(())

    def step() -> int:
        nonlocal batches
        try:
            (x0, x1), _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            (x0, x1), _ = next(batches)
        x0, x1 = x0.to(device), x1.to(device)
        if channels_last:
            x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
        with autocast:
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(x0)

    return step


def input_seconds(trainer: Pretraining, repeats: int) -> list[float]:
    """Seconds per batch of the input path alone (loader + views + layout), repeated: the part of an
    end-to-end step that model-only leaves out. Cheap, so it can be timed many times."""
    times = []
    batches = trainer.loader.iterate()
    for _ in range(repeats + 1):
        start = time.perf_counter()
        try:
            images, _, _ = next(batches)
        except StopIteration:
            batches = trainer.loader.iterate()
            images, _, _ = next(batches)
        with torch.no_grad():
            views = trainer.method.views(images)
        if trainer.channels_last:
            views = to_channels_last(views)
        synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]  # the first call warms up


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and range of per-round ratios."""
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else (ordered[0],) * 3
    return {"median": round(statistics.median(ordered), 3), "q1": round(q1, 3), "q3": round(q3, 3),
            "min": round(ordered[0], 3), "max": round(ordered[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=["fashion-mnist", "stl10-like"], default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=32, help="ResNet-18 width (64 = torchvision's; 32: the demo's)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the first round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds (A B C ... A B C ...); ratios are taken within a round")
    parser.add_argument("--precisions", nargs="*", default=None,
                        help="default: those this machine runs natively (bf16 only with avx512_bf16/amx or a GPU)")
    parser.add_argument("--lightly-workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--input-repeats", type=int, default=30,
                        help="timings of the input path alone (loader + views), for the implied ratio")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="default benchmarks/out/throughput-SETTING.json")
    args = parser.parse_args()
    args.out = args.out or str(ROOT / "benchmarks" / "out" / f"throughput-{args.setting}.json")

    from selfsup.engine.runtime import pick_device

    device = pick_device(args.device)
    precisions, skipped = native_precisions(device)
    if args.precisions:
        precisions, skipped = args.precisions, []
    for reason in skipped:
        print(f"skipped {reason}", flush=True)
    scratch = scratch_folder()
    variants, layouts, inputs = {}, {}, {}
    for precision in precisions:
        trainer = make_trainer(args, precision, scratch / precision)
        layouts[precision] = trainer.channels_last
        inputs[precision] = input_seconds(trainer, args.input_repeats)
        variants[f"selfsup end-to-end {precision}"] = ours_end_to_end(trainer)
        variants[f"selfsup model-only {precision}"] = ours_model_only(trainer)
    lightly_setups = {"lightly default (fp32)": ("fp32", False)}
    for precision in precisions:
        layout = "channels_last" if layouts[precision] else "NCHW"
        lightly_setups[f"lightly + selfsup settings ({precision}, {layout})"] = (precision, layouts[precision])
    for label, (precision, channels_last) in lightly_setups.items():
        for workers in args.lightly_workers:
            trainer = make_trainer(args, precision, scratch / f"{label}{workers}")
            step = lightly_pipeline(trainer, args, workers, precision, channels_last)
            if step is not None:
                variants[f"{label} workers={workers}"] = step
    rounds = interleaved_rounds(variants, args.rounds, args.steps, args.warmup)
    median = {name: statistics.median(values) for name, values in rounds.items()}

    def paired(numerator: str, denominator: str) -> list[float]:
        return [a / b for a, b in zip(rounds[numerator], rounds[denominator])]

    ratios, implied = {}, {}
    for precision in precisions:
        ratios[f"end-to-end / model-only ({precision})"] = spread(
            paired(f"selfsup end-to-end {precision}", f"selfsup model-only {precision}"))
        # The same ratio from its parts: model-only step time and the input path's time, each a median.
        step = args.batch_size / median[f"selfsup model-only {precision}"]
        data = statistics.median(inputs[precision])
        quartiles = statistics.quantiles(inputs[precision], n=4)
        implied[precision] = {"model_step_s": round(step, 3), "input_s": round(data, 4),
                              "input_s_quartiles": [round(quartiles[0], 4), round(quartiles[2], 4)],
                              "end_to_end_over_model_only": round(step / (step + data), 4)}
        for name in rounds:
            if name.startswith("lightly"):
                ratios[f"selfsup end-to-end {precision} / {name}"] = spread(
                    paired(f"selfsup end-to-end {precision}", name))
    report = {
        "date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": describe_device(device), "cpu_flags": cpu_flags(), "platform": platform.platform(),
        "versions": library_versions(), "setting": args.setting, "batch_size": args.batch_size, "width": args.width,
        "steps": args.steps, "rounds": args.rounds, "skipped": skipped,
        "channels_last": {p: layouts[p] for p in precisions},
        "img_per_s": {k: round(v, 1) for k, v in median.items()}, "all_rounds": rounds, "ratios": ratios,
        "implied_from_parts": implied,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']} (CPU flags: {' '.join(report['cpu_flags']) or 'unknown'}), {args.setting}, "
          f"batch {args.batch_size}, ResNet-18 width {args.width}, {args.rounds} rounds x {args.steps} steps, "
          f"{report['date']}")
    for reason in skipped:
        print(f"skipped {reason}")
    print("| variant | img/s (median over rounds) | min | max |\n|---|---|---|---|")
    for name, values in rounds.items():
        print(f"| {name} | {median[name]:.1f} | {min(values):.1f} | {max(values):.1f} |")
    print("\n| ratio (paired within each round) | median | quartiles | min-max |\n|---|---|---|---|")
    for name, value in ratios.items():
        print(f"| {name} | {value['median']:.3f} | {value['q1']:.3f}-{value['q3']:.3f} | "
              f"{value['min']:.3f}-{value['max']:.3f} |")
    print("\n| from the parts | model-only step (median) | input path: loader + views (median of "
          f"{args.input_repeats}) | implied end-to-end / model-only |\n|---|---|---|---|")
    for precision, parts in implied.items():
        print(f"| {precision} | {parts['model_step_s']:.2f} s | {1000 * parts['input_s']:.0f} ms | "
              f"{parts['end_to_end_over_model_only']:.3f} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
