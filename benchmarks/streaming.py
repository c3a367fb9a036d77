"""Streaming image files (data.source=stream) against torchvision's and lightly's pipelines, the cache
against memory, and what a streaming run holds in memory as the dataset grows.

    python benchmarks/streaming.py                 # about 20 minutes on 2 cores; results are kept
    python benchmarks/streaming.py --parts rss     # one part again

(input) SimCLR's two views per image from a generated folder of JPEGs of mixed sizes (300-800 px),
        at 96 and 224 px: selfsup's StreamLoader (workers decode and take both crops from the full
        image; flip, colour, grayscale and normalisation batched in the training process) against
        torchvision's ImageFolder + the same transforms in PIL + a DataLoader, and lightly's
        LightlyDataset + SimCLRTransform (blur off: SimCLR's CIFAR setting, which selfsup's preset
        uses), all with the same workers, measured in interleaved rounds;
(cost)  where the time goes, in one process: a worker's share per image (selfsup's decode and two
        crops; torchvision's ImageFolder item with its transforms), and selfsup's batched views alone;
(train) at 96 px, ResNet-18 SimCLR: input alone, the training step alone (a batch replayed), and
        the two together (the stream feeding the step), to see which one bounds a run;
(stl)   an STL-10-sized set (96 px images): two views from memory, from a memory-mapped cache and
        from a stream;
(rss)   peak resident memory of a process streaming one pass of 10k and of 100k images, workers
        included, against what holding the decoded set would take;
(wait)  OpenMP threads that spin between parallel regions (torch's default) against threads that
        sleep (OMP_WAIT_POLICY=PASSIVE): a SimCLR ResNet-18 step on
        Fashion-MNIST in memory (batch 256; needs the dataset) and the stream of (input) at 96 px,
        each in a fresh process, alternating.

Each part's result is written to ``--out`` (JSON) as soon as it is measured; a run that is stopped
keeps what it measured, and parts already in the file are skipped unless ``--again``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import jpeg_folder  # noqa: E402
from throughput import cpu_flags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the three input pipelines

def selfsup_batches(folder: Path, size: int, batch: int, workers: int):  # noqa: ANN201
    """A generator of SimCLR's two float views per image, selfsup's way."""
    from selfsup.data import StreamLoader, load_dataset
    from selfsup.views import ImageInfo, TwoViews

    dataset = load_dataset("imagefolder", "train", folder, image_size=size, source="stream", quiet=True)
    views = TwoViews(ImageInfo(size, 3, (0.5,) * 3, (0.25,) * 3))
    # No base image: nothing here reads it (a run with the online probe has its workers make it too).
    loader = StreamLoader(dataset, batch, torch.device("cpu"), views.crops(), workers=workers, base=False)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for images, _, _ in loader.iterate():
            with torch.no_grad():
                yield views(images)
        epoch += 1


def simclr_transform(size: int):  # noqa: ANN201
    """SimCLR's augmentation in torchvision (PIL): the one the papers' code runs per image."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                      T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])


class TwoCrops:
    def __init__(self, transform) -> None:  # noqa: ANN001
        self.transform = transform

    def __call__(self, image):  # noqa: ANN001, ANN204
        return [self.transform(image), self.transform(image)]


def torchvision_batches(folder: Path, size: int, batch: int, workers: int):  # noqa: ANN201
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(folder), transform=TwoCrops(simclr_transform(size)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    while True:
        for views, _ in loader:
            yield views


def lightly_batches(folder: Path, size: int, batch: int, workers: int):  # noqa: ANN201
    from lightly.data import LightlyDataset
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=size, gaussian_blur=0.0, normalize={"mean": [0.5] * 3, "std": [0.25] * 3})
    dataset = LightlyDataset(input_dir=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    while True:
        for views, _, _ in loader:
            yield views


PIPELINES = {"selfsup stream": selfsup_batches, "torchvision ImageFolder": torchvision_batches,
             "lightly": lightly_batches}


def images_per_second(batches, count: int, warmup: int, batch: int) -> float:  # noqa: ANN001
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(count):
        views = next(batches)
        assert len(views) == 2 and views[0].shape[0] == batch
    return count * batch / (time.perf_counter() - start)


def measured(make, args: argparse.Namespace) -> float:  # noqa: ANN001
    """img/s of a fresh pipeline after a warm-up, closed afterwards: no pipeline's workers are left
    prefetching while the next one is timed."""
    batches = make()
    try:
        return images_per_second(batches, args.batches, 3, args.batch)
    finally:
        batches.close()


def input_part(folder: Path, args: argparse.Namespace) -> dict:
    rows = {}
    for size in args.sizes:
        rounds: dict[str, list[float]] = {name: [] for name in args.pipelines}
        for round_index in range(args.rounds):  # interleaved: the host's drift hits every pipeline alike
            for name in args.pipelines:
                rounds[name].append(measured(lambda: PIPELINES[name](folder, size, args.batch, args.workers), args))
                print(f"{size} px, round {round_index + 1}: {name:24s} {rounds[name][-1]:6.1f} img/s", flush=True)
        median = {name: round(statistics.median(values), 1) for name, values in rounds.items()}
        ratios = {f"selfsup / {name}": round(statistics.median(
            [a / b for a, b in zip(rounds["selfsup stream"], rounds[name])]), 2)
            for name in rounds if name != "selfsup stream" and "selfsup stream" in rounds}
        rows[f"{size}px"] = {"img_per_s": median, "rounds": rounds, "ratios": ratios}
    return {"workers": args.workers, "batch": args.batch, "batches_per_round": args.batches, "sizes": rows}


# ---------------------------------------------------------------- where the time goes

def cost_part(folder: Path, args: argparse.Namespace) -> dict:
    from torchvision.datasets import ImageFolder

    from selfsup.data import load_dataset
    from selfsup.data.stream import CroppingReader
    from selfsup.engine import Precropped
    from selfsup.views import ImageInfo, TwoViews

    rows: dict[str, dict] = {}
    count = 200
    rows["decode"] = decoders(sorted(folder.rglob("*.jpg"))[:count])
    print(f"cost decode: {rows['decode']}", flush=True)
    for size in args.sizes:
        views = TwoViews(ImageInfo(size, 3, (0.5,) * 3, (0.25,) * 3))
        dataset = load_dataset("imagefolder", "train", folder, image_size=size, source="stream", quiet=True)
        ours = CroppingReader(dataset, views.crops(), seed=0, base=False)
        theirs = ImageFolder(str(folder), transform=TwoCrops(simclr_transform(size)))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        timings = {}
        for name, item in (("selfsup worker, ms/img", ours.__getitem__), ("torchvision worker, ms/img", theirs.__getitem__)):
            start = time.perf_counter()
            for index in range(count):
                item(index)
            timings[name] = round((time.perf_counter() - start) / count * 1000, 2)
        torch.set_num_threads(threads)
        batch = Precropped(None, [torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8) for _ in range(2)],
                           [torch.rand(64, 4)] * 2)
        with torch.no_grad():
            views(batch)
            start = time.perf_counter()
            for _ in range(5):
                views(batch)
        timings[f"selfsup batched views alone, img/s ({threads} threads)"] = round(5 * 64 / (time.perf_counter() - start), 1)
        rows[f"{size}px"] = timings
        print(f"cost {size} px: {timings}", flush=True)
    return rows


def decoders(files: list[Path]) -> dict[str, float]:
    """ms per image of decoding full JPEGs to RGB: Pillow (what the workers use) and torchvision.io."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image, read_file

    def pillow(path: Path) -> object:
        with Image.open(path) as image:
            return image.convert("RGB")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timings = {}
    for name, decode in (("pillow, ms/img", pillow),
                         ("torchvision.io, ms/img", lambda path: decode_image(read_file(str(path)), ImageReadMode.RGB))):
        for path in files[:5]:
            decode(path)
        start = time.perf_counter()
        for path in files:
            decode(path)
        timings[name] = round((time.perf_counter() - start) / len(files) * 1000, 2)
    torch.set_num_threads(threads)
    return timings


# ---------------------------------------------------------------- training at 96 px

def train_part(folder: Path, args: argparse.Namespace) -> dict:
    """SimCLR ResNet-18 (CIFAR stem) at 96 px: input alone, the step alone, and the stream feeding the step."""
    from selfsup.config import apply_overrides, resolve
    from selfsup.recipes.pretrain import Pretraining

    config = resolve(apply_overrides({}, [
        "method.name=simclr", "data.name=imagefolder", f"data.root={folder}", "data.image_size=96",
        "data.source=stream", f"data.workers={args.workers}", "backbone.name=resnet18", "train.batch_size=64",
        "train.epochs=1", "train.knn_every=0", "train.online_probe=false", "train.precision=auto"]))
    trainer = Pretraining(config, Path(args.scratch) / "train-run", quiet=True)
    engine = trainer.engine
    results: dict[str, list[float]] = {"input alone": [], "step alone": [], "stream + step": []}
    fixed = next(trainer.loader.iterate())
    for round_index in range(args.rounds):
        batches = trainer.loader.iterate()
        results["input alone"].append(_timed(lambda: next(batches), args.train_steps, 64))
        batches.close()
        results["step alone"].append(_timed(lambda: engine.train_step(*fixed), args.train_steps, 64))
        batches = trainer.loader.iterate()
        results["stream + step"].append(_timed(lambda: engine.train_step(*next(batches)), args.train_steps, 64))
        batches.close()
        print(f"train round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    return {"precision": trainer.precision.name, "channels_last": trainer.channels_last, "steps": args.train_steps,
            "img_per_s": {k: round(statistics.median(v), 1) for k, v in results.items()}, "rounds": results}


def _timed(step, count: int, batch: int) -> float:  # noqa: ANN001
    step()  # warm-up (and, for a fresh iterator, the workers' start)
    start = time.perf_counter()
    for _ in range(count):
        step()
    return count * batch / (time.perf_counter() - start)


# ---------------------------------------------------------------- memory, cache, stream on STL-10-sized data

def stl_part(args: argparse.Namespace) -> dict:
    from selfsup.data import BatchLoader, StreamLoader, load_dataset
    from selfsup.views import ImageInfo, TwoViews

    folder = Path(args.scratch) / "stl-like"
    if not folder.is_dir():
        make_jpegs(folder, args.stl_images, 96, 96)
    common = dict(image_size=96, quiet=True, cache_root=Path(args.scratch) / "caches")
    sets = {"memory": load_dataset("imagefolder", "train", folder, source="memory", **common),
            "cache": load_dataset("imagefolder", "train", folder, source="cache", **common),
            "stream": load_dataset("imagefolder", "train", folder, source="stream", **common)}
    views = TwoViews(ImageInfo(96, 3, (0.5,) * 3, (0.25,) * 3))
    cpu = torch.device("cpu")

    def batches(name: str):  # noqa: ANN202
        loader = StreamLoader(sets[name], args.batch, cpu, views.crops(), workers=args.workers, base=False) \
            if name == "stream" \
            else BatchLoader(sets[name], args.batch, cpu)
        while True:
            for images, _, _ in loader.iterate():
                with torch.no_grad():
                    yield views(images)

    rounds: dict[str, list[float]] = {name: [] for name in sets}
    for round_index in range(args.rounds):
        for name in sets:
            rounds[name].append(measured(lambda: batches(name), args))
            print(f"stl round {round_index + 1}: {name:7s} {rounds[name][-1]:7.1f} img/s", flush=True)
    return {"images": args.stl_images, "workers": args.workers,
            "img_per_s": {k: round(statistics.median(v), 1) for k, v in rounds.items()}, "rounds": rounds}


# ---------------------------------------------------------------- peak memory against the dataset's size

RSS_CHILD = """
import resource, sys, torch
from selfsup.data import StreamLoader, load_dataset
from selfsup.views import ImageInfo, TwoViews
folder, batches, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = load_dataset("imagefolder", "train", folder, image_size=64, source="stream", quiet=True)
views = TwoViews(ImageInfo(64, 3, (0.5,) * 3, (0.25,) * 3))
loader = StreamLoader(data, 64, torch.device("cpu"), views.crops(), workers=workers, base=False)
loader.set_epoch(0)
for number, (images, _, _) in enumerate(loader.iterate()):
    views(images)
    if number + 1 == batches:
        break
sys.path.insert(0, sys.argv[4])
from ladder import peak_rss_mib  # not ru_maxrss: this child would report its parent's
own = peak_rss_mib()
workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(len(data), own, workers_peak, data.nbytes)
"""


def rss_part(args: argparse.Namespace) -> dict:
    rows = {}
    for count in args.rss_images:
        folder = Path(args.scratch) / f"small-{count}"
        if not folder.is_dir():
            make_jpegs(folder, count, 64, 128)
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(folder), str(args.rss_batches), str(args.workers),
                              str(Path(__file__).parent)],
                             capture_output=True, text=True, check=True).stdout.split()
        images, own, worker, decoded = int(out[-4]), float(out[-3]), int(out[-2]), int(out[-1])
        rows[str(count)] = {"images": images, "peak_rss_mb": own,
                            "peak_worker_rss_mb": round(worker / 1024, 1),
                            "decoded_at_64px_mb": round(decoded / 2**20, 1)}
        print(f"rss {count}: {rows[str(count)]}", flush=True)
    return {"batches": args.rss_batches, "workers": args.workers, "image_size": 64, "rows": rows}


WAIT_CHILD = """
import shutil, sys, tempfile, torch
from pathlib import Path
what = sys.argv[1]
if what == "step":
    from selfsup.config import apply_overrides, resolve
    from selfsup.recipes.pretrain import Pretraining
    config = resolve(apply_overrides({}, ["method.name=simclr", "data.name=fashion_mnist", f"data.root={sys.argv[2]}",
        "backbone.name=resnet18", "train.batch_size=256", "train.epochs=1", "train.knn_every=0",
        "train.online_probe=false", "data.subset=4096"]))
    run_dir = tempfile.mkdtemp()
    print(256 / Pretraining(config, Path(run_dir) / "run", quiet=True).engine.time_steps(count=6))
    shutil.rmtree(run_dir)
else:
    sys.path.insert(0, sys.argv[3])
    from streaming import images_per_second, selfsup_batches
    print(images_per_second(selfsup_batches(Path(sys.argv[2]), 96, 64, 2), 25, 3, 64))
"""


def wait_part(folder: Path, args: argparse.Namespace) -> dict:
    variants = {"spinning (unset)": None, "sleeping (PASSIVE)": "PASSIVE"}
    rows = {}
    for what, data in (("step", args.fashion_mnist), ("stream", str(folder))):
        if not Path(data).exists():
            rows[what] = f"skipped: {data} not found"
            continue
        rounds: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(args.rounds):
            for name, policy in variants.items():
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if policy is not None:
                    env["OMP_WAIT_POLICY"] = policy
                out = subprocess.run([sys.executable, "-c", WAIT_CHILD, what, data, str(Path(__file__).parent)],
                                     capture_output=True, text=True, check=True, env=env).stdout.split()
                rounds[name].append(float(out[-1]))
                print(f"wait {what} round {round_index + 1}: {name:20s} {rounds[name][-1]:7.1f} img/s", flush=True)
        rows[what] = {"img_per_s": {k: round(statistics.median(v), 1) for k, v in rounds.items()},
                      "passive / spinning": round(statistics.median(
                          [b / a for a, b in zip(*rounds.values())]), 2), "rounds": rounds}
    return rows


def make_jpegs(folder: Path, count: int, low: int, high: int, seed: int = 0) -> None:
    """``count`` JPEGs of ``low``-``high`` px in 10 class folders, written to a temporary name first."""
    from PIL import Image
    from tqdm import tqdm

    partial = folder.with_name(folder.name + ".partial")
    generator = np.random.default_rng(seed)
    for index in tqdm(range(count), desc=f"writing {folder.name}", unit="img"):
        width, height = generator.integers(low, high + 1, size=2)
        pixels = generator.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((int(width), int(height)), Image.Resampling.BILINEAR)
        (partial / f"class{index % 10}").mkdir(parents=True, exist_ok=True)
        image.save(partial / f"class{index % 10}" / f"{index:06d}.jpg", quality=90)
    partial.rename(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="*", default=["wait", "input", "cost", "train", "stl", "rss"],
                        choices=["wait", "input", "cost", "train", "stl", "rss"])
    parser.add_argument("--again", action="store_true", help="measure parts already in --out again")
    parser.add_argument("--images", type=int, default=20000, help="(input, train) JPEGs of 300-800 px")
    parser.add_argument("--sizes", type=int, nargs="*", default=[96, 224])
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per pipeline and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=15)
    parser.add_argument("--stl-images", type=int, default=10000)
    parser.add_argument("--rss-images", type=int, nargs="*", default=[10000, 100000])
    parser.add_argument("--rss-batches", type=int, default=150)
    parser.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist", help="(wait)")
    parser.add_argument("--scratch", default="/tmp/selfsup-streaming-bench", help="generated images (kept)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "streaming.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"date": datetime.date.today().isoformat(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                   "torch": torch.__version__})
    folder = Path(args.scratch) / "jpegs"
    if {"input", "cost", "train", "wait"} & set(args.parts) and not folder.is_dir():
        partial = folder.with_name("jpegs.partial")
        jpeg_folder(partial, args.images)
        partial.rename(folder)
    parts = {"input": lambda: input_part(folder, args), "train": lambda: train_part(folder, args),
             "stl": lambda: stl_part(args), "rss": lambda: rss_part(args), "wait": lambda: wait_part(folder, args),
             "cost": lambda: cost_part(folder, args)}
    for name in args.parts:
        if name in report and not args.again:
            print(f"{name}: already measured in {out} (--again to measure it again)")
            continue
        report[name] = parts[name]()
        report[name]["command"] = "python benchmarks/streaming.py " + " ".join(sys.argv[1:] if argv is None else argv)
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items()}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
