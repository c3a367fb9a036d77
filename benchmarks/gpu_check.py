"""One command for a lent GPU machine: does every method train there, and how fast is it?

    python benchmarks/gpu_check.py --data-root data/fashion-mnist   # on the GPU machine, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick             # the same path in a minute (CI runs it)

(a) every method's CIFAR-10 preset takes a few steps on generated 32 px images, in bf16 and in
    fp16 with loss scaling (on a CPU: the precision it runs natively), and any failure is listed;
(b) SimCLR, BYOL and DINO at CIFAR size with a full-width ResNet-18: end-to-end img/s (uint8
    batch -> views on the device -> step) against model-only img/s (pre-made views replayed),
    measured interleaved;
(c) the same three against lightly's pipeline (PIL transforms, a DataLoader with a worker per
    core), when lightly is installed (``pip install -e .[bench]``); the goal is >= 2x;
(d) decoding a generated folder of JPEGs of mixed sizes (300-800 px) at 224 px: the in-memory
    reader's decode (a thread per core), and a stream's workers (a process per core) taking
    SimCLR's two random resized crops of each full image (benchmarks/streaming.py measures more);
(e) a SimCLR accuracy smoke: pretraining for ``--smoke-minutes`` (1.5) on Fashion-MNIST (``--data-root``:
    carry the files to the machine; without them the part is skipped), then the kNN and linear probe.

Every part is independent: a failure is recorded and the next part runs. The result is printed and
written as a RESULTS.md section (``--out``, default benchmarks/out/gpu_check.md) plus JSON beside it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import cpu_supports_bf16, describe_device, library_versions, pick_device
from selfsup.methods import METHODS
from selfsup.recipes.pretrain import Pretraining, pretrain
from throughput import cpu_flags, interleaved_rounds, ours_end_to_end, ours_model_only, scratch_folder, spread

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT_METHODS = ("simclr", "byol", "dino")


def cifar_like(folder: Path, images: int, seed: int = 0) -> Path:
    """``train.pt`` and ``test.pt`` of random 32 px colour images in 10 classes (content does not change
    the cost, and part (a) asks only whether each method trains)."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    for split, count in (("train", images), ("test", max(images // 5, 20))):
        torch.save({"images": torch.from_numpy(generator.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)),
                    "targets": torch.from_numpy(np.arange(count) % 10)}, folder / f"{split}.pt")
    return folder


def precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    return ["bf16"] if cpu_supports_bf16() else ["fp32"]


def trainer(method: str, data: Path, run_dir: Path, args: argparse.Namespace, *extra: str) -> Pretraining:
    overrides = ["data.name=tensors", f"data.root={data}", "data.image_size=null", "train.knn_every=0",
                 "train.online_probe=false", "train.log_every=1000000", f"train.device={args.device}", *extra]
    config = resolve(apply_overrides(read_yaml(find_config(f"{method}_cifar10")), overrides))
    if args.quick:  # tiny batches, and a ResNet narrowed (a ViT's size is its name: vit_tiny stays)
        shrink = ["train.batch_size=16"] + (["backbone.width=8"] if config.backbone.name.startswith("resnet") else [])
        config = resolve(apply_overrides(config.to_dict(), shrink))
    return Pretraining(config, run_dir, quiet=True)


def every_method(data: Path, scratch: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """(a): a few steps of every preset in each precision; the losses, or the error."""
    rows = {}
    for method in args.methods or sorted(METHODS):
        for precision in precisions(device):
            name = f"{method} {precision}"
            try:
                run = trainer(method, data, scratch / "presets" / name.replace(" ", "-"), args,
                              f"train.precision={precision}", f"train.max_steps={args.steps}")
                summary = run.fit()
                rows[name] = {"ok": True, "steps": summary["steps"], "img_per_s": summary["img_per_s"]}
            except Exception as err:  # noqa: BLE001 - every failure is a finding, the next method still runs
                rows[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500],
                              "where": traceback.format_exc(limit=-3)[-1500:]}
            print(f"(a) {name}: {'ok' if rows[name]['ok'] else rows[name]['error']}", flush=True)
    return rows


def throughput(data: Path, scratch: Path, args: argparse.Namespace, lightly: bool) -> dict:
    """(b) and (c): img/s end to end, model only and (c) lightly's pipeline, interleaved rounds."""
    variants = {}
    width = [] if args.quick else ["backbone.width=64"]
    for method in THROUGHPUT_METHODS:
        run = trainer(method, data, scratch / "throughput" / method, args, "backbone.name=resnet18", *width,
                      "backbone.patch_size=null", "backbone.registers=0", "backbone.drop_path=0.0")
        variants[f"{method}: end to end"] = ours_end_to_end(run)
        variants[f"{method}: model only"] = ours_model_only(run)
        if lightly:
            from siamese_throughput import lightly_pipeline

            step = lightly_pipeline(method, run, os.cpu_count() or 1)
            if step is not None:
                variants[f"{method}: lightly"] = step
    rounds = interleaved_rounds(variants, args.rounds, args.timed_steps, warmup=1)
    ratios = {}
    for method in THROUGHPUT_METHODS:
        ours = rounds[f"{method}: end to end"]
        ratios[f"{method}: end to end / model only"] = spread(
            [a / b for a, b in zip(ours, rounds[f"{method}: model only"])])
        if f"{method}: lightly" in rounds:
            ratios[f"{method}: end to end / lightly"] = spread([a / b for a, b in zip(ours, rounds[f"{method}: lightly"])])
    return {"variants": list(variants),
            "img_per_s": {name: round(statistics.median(values), 1) for name, values in rounds.items()},
            "ratios": ratios}


def jpeg_folder(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of random sizes between 300 and 800 px in 10 class folders."""
    from PIL import Image

    generator = np.random.default_rng(seed)
    for index in range(count):
        width, height = generator.integers(300, 801, size=2)
        pixels = generator.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)  # smooth-ish content
        image = Image.fromarray(pixels).resize((int(width), int(height)), Image.Resampling.BILINEAR)
        (folder / f"class{index % 10}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"class{index % 10}" / f"{index:06d}.jpg", quality=90)
    return folder


def decoding(scratch: Path, args: argparse.Namespace) -> dict:
    """(d): images per second of a JPEG folder at 224 px: the in-memory reader's decode (a thread per
    core), and a stream's workers (a process per core) taking SimCLR's two crops from the full images."""
    from selfsup.data import CropSpec, StreamLoader, load_dataset
    from selfsup.data.formats import read_image_folder

    count = 64 if args.quick else 2000
    folder = jpeg_folder(scratch / "jpegs", count)
    threads = os.cpu_count() or 1
    start = time.perf_counter()
    images, _, _, _ = read_image_folder(folder, 224, quiet=True, threads=threads)
    seconds = time.perf_counter() - start
    streamed = load_dataset("imagefolder", "train", folder, image_size=224, source="stream", quiet=True)
    loader = StreamLoader(streamed, 16, torch.device("cpu"), [CropSpec(224)] * 2, workers=threads, base=False)
    start = time.perf_counter()
    crops = sum(len(batch.crops) * len(batch) for batch, _, _ in loader)
    crop_seconds = time.perf_counter() - start
    return {"images": len(images), "threads": threads, "img_per_s": round(len(images) / seconds, 1),
            "two_crops_img_per_s": round(crops / 2 / crop_seconds, 1), "crops": crops}


def smoke(scratch: Path, args: argparse.Namespace) -> dict:
    """(e): SimCLR for a few minutes on Fashion-MNIST, then the frozen-feature protocols."""
    from selfsup.recipes.evaluate import checkpoint_evaluator

    overrides = [f"data.root={args.data_root}", f"train.device={args.device}"]
    if args.quick:  # one epoch, not a time budget: the path is checked, not the speed
        overrides += ["train.epochs=1", "train.batch_size=16", "backbone.width=8", "train.knn_every=0",
                      "train.online_probe=false"]
    else:
        overrides.append(f"train.minutes={args.smoke_minutes}")
    config = resolve(apply_overrides(read_yaml(find_config("simclr_fashion_mnist")), overrides))
    run_dir = scratch / "smoke"
    summary = pretrain(config, run_dir, quiet=True)
    evaluator, config = checkpoint_evaluator(run_dir, quiet=True)
    results = evaluator.run(["knn", "linear"], config.eval, config.train.seed)[evaluator.name]
    return {"steps": summary["steps"], "train_minutes": summary["train_minutes"], "img_per_s": summary["img_per_s"],
            "knn_top1": round(results["knn"]["top1"], 2), "linear_top1": round(results["linear"]["top1"], 2)}


def section(report: dict) -> str:
    """The RESULTS.md section of one check."""
    lines = [f"## GPU check, {report['date']}", "", f"`{report['command']}` on {report['machine']} "
             f"(CPU flags: {' '.join(report['cpu_flags']) or '-'}), torch {report['versions'].get('torch')}, "
             f"{report['seconds']:.0f} s in all.", ""]
    presets = report.get("presets") or {}
    if isinstance(presets.get("error"), str):
        lines.append(f"(a) did not run: {presets['error']}")
    elif presets:
        failed = {name: row for name, row in presets.items() if not row.get("ok")}
        lines += [f"(a) {len(presets) - len(failed)} of {len(presets)} method x precision runs trained "
                  f"{report['steps']} steps" + (":" if failed else "."), ""]
        lines += [f"- **{name}** failed: {row['error']}" for name, row in failed.items()]
    measured = report.get("throughput")
    if isinstance(measured, dict) and "img_per_s" in measured:
        lines += ["", "(b, c) img/s, medians of interleaved rounds:", "", "| variant | img/s |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in measured["img_per_s"].items()]
        lines += ["", "| ratio | median [min, max] over rounds |", "|---|---|"]
        lines += [f"| {name} | {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] |" for name, r in measured["ratios"].items()]
    elif measured:
        lines.append(f"(b, c) failed: {measured.get('error')}")
    decoded = report.get("decoding")
    if decoded and "img_per_s" in decoded:
        lines += ["", f"(d) decoding {decoded['images']} JPEGs (300-800 px) at 224 px with {decoded['threads']} threads: "
                  f"{decoded['img_per_s']} img/s (the in-memory reader); streamed by {decoded['threads']} worker "
                  f"processes, each image decoded once and SimCLR's two random resized crops taken at 224 from "
                  f"the full image: {decoded['two_crops_img_per_s']} img/s."]
    elif decoded:
        lines += ["", f"(d) failed: {decoded.get('error')}"]
    result = report.get("smoke")
    if result is None:
        pass
    elif "knn_top1" in result:
        lines.append(f"(e) SimCLR smoke: {result['steps']} steps in {result['train_minutes']} min at {result['img_per_s']} "
                     f"img/s; kNN top-1 {result['knn_top1']}%, linear top-1 {result['linear_top1']}%.")
    else:
        lines.append(f"(e) {result.get('skipped') or result.get('error')}")
    return "\n".join(lines) + "\n"


def guarded(part, *arguments) -> dict:  # noqa: ANN001
    try:
        return part(*arguments)
    except Exception as err:  # noqa: BLE001 - a part that fails is reported; the others still run
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"[:500]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny networks and batches: checks the path, not speed")
    parser.add_argument("--methods", nargs="*", help="(a) only these methods (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="(a) steps per method and precision")
    parser.add_argument("--rounds", type=int, default=3, help="(b, c) interleaved rounds")
    parser.add_argument("--timed-steps", type=int, default=5, help="(b, c) timed steps per variant and round")
    parser.add_argument("--no-lightly", action="store_true", help="(c) skip lightly's pipeline")
    parser.add_argument("--data-root", help="(e) the Fashion-MNIST folder; without it (e) is skipped")
    parser.add_argument("--smoke-minutes", type=float, default=1.5)
    parser.add_argument("--parts", nargs="*", default=["a", "b", "d", "e"], choices=["a", "b", "d", "e"],
                        help="which parts to run ((b) includes (c))")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "gpu_check.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.timed_steps = min(args.steps, 2), min(args.rounds, 1), min(args.timed_steps, 1)
    device = pick_device(args.device)
    started = time.perf_counter()
    scratch = scratch_folder()
    data = cifar_like(scratch / "cifar-like", 256 if args.quick else 4096)
    report = {"date": datetime.date.today().isoformat(),
              "command": " ".join(["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": describe_device(device), "cpu_flags": cpu_flags(), "versions": library_versions(),
              "steps": args.steps}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> str:  # after every part: a run cut short by its time limit still returns what it measured
        report["seconds"] = round(time.perf_counter() - started, 1)
        text = section(report)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        return text

    if "a" in args.parts:
        report["presets"] = guarded(every_method, data, scratch, args, device)
        save()
    if "b" in args.parts:
        try:
            import lightly  # noqa: F401
            has_lightly = not args.no_lightly
        except ImportError:
            has_lightly = False
        report["throughput"] = guarded(throughput, data, scratch, args, has_lightly)
        if not has_lightly:
            report["throughput"]["lightly"] = "not measured: lightly is not installed (pip install -e .[bench])"
        save()
    if "d" in args.parts:
        report["decoding"] = guarded(decoding, scratch, args)
        save()
    if "e" in args.parts:
        report["smoke"] = guarded(smoke, scratch, args) if args.data_root else \
            {"skipped": "SimCLR smoke: skipped, no --data-root (carry the Fashion-MNIST files to the machine)"}
    print("\n" + save())
    failures = [name for name, row in (report.get("presets") or {}).items() if isinstance(row, dict) and not row["ok"]]
    parts = ("presets", "throughput", "decoding", "smoke")
    return 1 if failures or any("error" in (report.get(part) or {}) for part in parts) \
        else 0


if __name__ == "__main__":
    sys.exit(main())
