"""Where a GPU's end-to-end time goes: SimCLR's, BYOL's and DINO's views, operation by operation.

    python benchmarks/gpu_views.py --out $OUT/gpu_views.json   # on the GPU machine, about a minute and a half
    python benchmarks/gpu_views.py --device cpu --quick         # the same path on tiny batches

``benchmarks/gpu_check.py`` (b) found end-to-end steps on an H200 at a fifth of the model-only rate
and at 0.4x lightly's pipeline of PIL workers: the views, made on the device, cost 1.6-8x the
network (BYOL to DINO). This splits that time, with the CIFAR-10 presets at width 64 as in (b), each
figure the median of synchronised repeats, and measures the two replacements it led to (RESULTS 31)
against what they replaced, side by side:

* the loader's next batch, the whole views, and a training step on replayed views (the network);
* each augmentation's operations one by one (crop, flip, colour jitter, grayscale, blur, solarize,
  normalise), each on the previous one's output;
* the crop (:mod:`selfsup.views.crop`, one ``grid_sample`` per batch) against kornia's
  ``RandomResizedCrop`` (image by image), the colour jitter on the device (the whole batch,
  :func:`~selfsup.views.color.jitter_whole_batch`) against the CPU's way there (chunks of ``CHUNK``
  images picked out with ``nonzero``), flip, grayscale, solarize and normalisation
  (:mod:`selfsup.views.coins`, a coin per image and ``torch.where``) against kornia's, and the whole
  views with all the previous ones put back;
* a profiler's table of one method's views: the operations by device time and the host syncs.

Everything goes to ``--out`` (JSON, rewritten after each part) and is printed as it is measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpu_check import cifar_like, trainer
from selfsup.engine.runtime import describe_device, pick_device
from selfsup.engine.steps import synchronize
from selfsup.views.augment import Augment, to_unit_float
from selfsup.views import color
from selfsup.views.color import ColorJitter
from throughput import ours_model_only
from views import previous_coin, previous_crop, with_previous_coins

METHODS = ("simclr", "byol", "dino")


def median_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 3)


def jitter_in_chunks(module: ColorJitter, x: torch.Tensor) -> torch.Tensor:
    """:class:`ColorJitter` as a CPU runs it (and a GPU did before): chunks of the drawn images."""
    return color.jitter_in_chunks(x, *module.draw(x))


def unique_augments(views: torch.nn.Module) -> dict[str, Augment]:
    found: dict[str, Augment] = {}
    for name, module in views.named_modules():
        if isinstance(module, Augment) and all(module is not seen for seen in found.values()):
            found[name or "augment"] = module
    return found


def measure(method: str, data: Path, scratch: Path, args: argparse.Namespace, device: torch.device) -> dict:
    width = ["backbone.width=8"] if args.quick else ["backbone.width=64"]
    run = trainer(method, data, scratch / method, args, "backbone.name=resnet18", *width,
                  "backbone.patch_size=null", "backbone.registers=0", "backbone.drop_path=0.0")
    batches = run.loader.iterate()
    images, _, _ = next(batches)
    views = run.method.views
    row: dict = {"batch_size": len(images), "views": len(views(images))}

    def next_batch() -> None:
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = run.loader.iterate()

    row["loader next batch ms"] = median_ms(next_batch, device, args.repeats)
    with torch.no_grad():
        row["views ms"] = median_ms(lambda: views(images), device, args.repeats)
    model_step = ours_model_only(run)
    row["step on replayed views ms"] = median_ms(model_step, device, args.repeats)
    ops: dict[str, dict[str, float]] = {}
    augments = unique_augments(views)
    kornia_crops = {name: previous_crop(augment).to(device) for name, augment in augments.items()}
    with torch.no_grad():
        for name, augment in augments.items():
            x, timings = to_unit_float(images), {}
            timings["to float"] = median_ms(lambda: to_unit_float(images), device, args.repeats)
            for op in augment.ops:
                label = type(op).__name__
                timings[label] = median_ms(lambda op=op, x=x: op(x), device, args.repeats)
                if op is augment.crop:
                    timings["kornia RandomResizedCrop (before)"] = median_ms(lambda c=kornia_crops[name], x=x: c(x),
                                                                            device, args.repeats)
                before = previous_coin(op)
                if before is not None:
                    timings[f"kornia {label} (before)"] = median_ms(lambda b=before.to(device), x=x: b(x), device,
                                                                   args.repeats)
                if isinstance(op, ColorJitter):
                    timings["ColorJitter in chunks (before)"] = median_ms(lambda op=op, x=x: jitter_in_chunks(op, x),
                                                                          device, args.repeats)
                x = op(x)
            ops[name] = timings
        row["ops ms"] = ops
        jitters = [m for m in views.modules() if isinstance(m, ColorJitter)]
        ours = {name: list(augment.ops) for name, augment in augments.items()}
        for name, augment in augments.items():
            augment.ops[0] = kornia_crops[name]
            with_previous_coins(augment).to(device)
        for module in jitters:
            module.forward = lambda x, module=module: jitter_in_chunks(module, x)
        row["views with every previous op ms"] = median_ms(lambda: views(images), device, args.repeats)
        for name, augment in augments.items():
            for index, op in enumerate(ours[name]):
                augment.ops[index] = op
        for module in jitters:
            del module.forward
    row["views / network"] = round(row["views ms"] / row["step on replayed views ms"], 2)
    row["previous views / network"] = round(
        row["views with every previous op ms"] / row["step on replayed views ms"], 2)
    if method == args.profile:
        row["profile"] = profile(views, images, device)
    return row


def profile(views: torch.nn.Module, images: torch.Tensor, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        views(images)
        synchronize(device)
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                views(images)
            synchronize(device)
    events = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=25, max_name_column_width=60)
    syncs = {e.key: e.count for e in events
             if any(s in e.key for s in ("Synchronize", "nonzero", "_local_scalar_dense", "Memcpy", "item"))}
    return {"table": table, "host syncs and copies (3 calls)": syncs,
            "kernel launches (3 calls)": sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny batches and network: checks the path")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--profile", default="dino", choices=METHODS, help="the method whose views are profiled")
    parser.add_argument("--out", default="benchmarks/out/gpu_views.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    device = pick_device(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": " ".join(["python benchmarks/gpu_views.py", *(sys.argv[1:] if argv is None else argv)]),
                    "machine": describe_device(device), "torch": torch.__version__, "methods": {}}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        data = cifar_like(scratch / "cifar-like", 256 if args.quick else 4096)
        for method in args.methods:
            try:
                report["methods"][method] = measure(method, data, scratch, args, device)
            except Exception as err:  # noqa: BLE001 - a failure is a finding; the next method still runs
                report["methods"][method] = {"error": f"{type(err).__name__}: {err}"[:500]}
            shown = {k: v for k, v in report["methods"][method].items() if k != "profile"}
            print(method, json.dumps(shown, indent=1), flush=True)
            if "profile" in report["methods"][method]:
                print(report["methods"][method]["profile"]["table"], flush=True)
                print(json.dumps({k: v for k, v in report["methods"][method]["profile"].items() if k != "table"}))
            out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
