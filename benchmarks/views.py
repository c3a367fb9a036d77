"""What the views cost: kornia's ColorJitter against selfsup's batched one, and a whole view as
selfsup makes it, with kornia's random resized crop put back (replaced by ``selfsup.views.crop``),
and with kornia's flip, grayscale, solarize and normalisation put back (replaced by
``selfsup.views.coins``).

Both jitters get the same batch and the same strengths; they run interleaved for several
rounds and the medians are reported (ms per batch), with the ratio paired within each round.

    python benchmarks/views.py                      # 256 images: 28 px gray and 96 px colour
    python benchmarks/views.py --rounds 3 --batch-size 128
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import kornia.augmentation as K
import torch

from selfsup.engine.runtime import describe_device, library_versions
from selfsup.views import Augment, AugmentSpec, ImageInfo
from selfsup.views.coins import Normalize, RandomGrayscale, RandomHorizontalFlip, RandomSolarize
from selfsup.views.color import ColorJitter

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name: (side, channels, jitter, blur): the Fashion-MNIST and STL-10 SimCLR presets
    "28 px gray": (28, 1, (0.4, 0.4, 0.0, 0.0), 0.0),
    "96 px colour": (96, 3, (0.4, 0.4, 0.4, 0.1), 0.5),
}


def previous_crop(augment: Augment) -> torch.nn.Module:
    """The kornia crop an augmentation used before :mod:`selfsup.views.crop` (image by image)."""
    spec = augment.spec
    return K.RandomResizedCrop((augment.size, augment.size), scale=spec.crop_scale, ratio=spec.crop_ratio)


def previous_coin(op: torch.nn.Module) -> torch.nn.Module | None:
    """The kornia operation that ``op`` of :mod:`selfsup.views.coins` replaced; None for the others."""
    if isinstance(op, RandomHorizontalFlip):
        return K.RandomHorizontalFlip(p=op.p)
    if isinstance(op, RandomGrayscale):
        return K.RandomGrayscale(p=op.p)
    if isinstance(op, RandomSolarize):
        return K.RandomSolarize(thresholds=0.0, additions=0.0, p=op.p)
    if isinstance(op, Normalize):
        return K.Normalize(op.mean.flatten(), op.std.flatten())
    return None


def with_previous_crop(augment: Augment) -> Augment:
    augment.ops[0] = previous_crop(augment)
    return augment


def with_previous_coins(augment: Augment) -> Augment:
    for index, op in enumerate(augment.ops):
        before = previous_coin(op)
        if before is not None:
            augment.ops[index] = before
    return augment


def milliseconds(fn, x: torch.Tensor, repeats: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="calls per variant and round")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "views.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {}
    for name, (side, channels, jitter, blur) in SETTINGS.items():
        images = torch.randint(0, 256, (args.batch_size, channels, side, side), dtype=torch.uint8)
        unit = images.float() / 255
        info = ImageInfo(side, channels, (0.5,) * channels, (0.25,) * channels)
        brightness, contrast, saturation, hue = jitter if channels == 3 else (*jitter[:2], 0.0, 0.0)
        spec = AugmentSpec(jitter=jitter, blur_p=blur, grayscale_p=0.2)
        variants = {
            "kornia ColorJitter": K.ColorJitter(brightness, contrast, saturation, hue, p=0.8),
            "selfsup ColorJitter": ColorJitter(*jitter, p=0.8, channels=channels),
            "whole view (selfsup Augment)": lambda x, a=Augment(info, spec): a(images),
            "whole view, kornia crop": lambda x, a=with_previous_crop(Augment(info, spec)): a(images),
            "whole view, kornia coins": lambda x, a=with_previous_coins(Augment(info, spec)): a(images),
        }
        times = {label: [] for label in variants}
        for fn in variants.values():
            fn(unit)  # warm-up
        for _ in range(args.rounds):
            for label, fn in variants.items():
                times[label].append(milliseconds(fn, unit, args.repeats))
        ratio = [k / s for k, s in zip(times["kornia ColorJitter"], times["selfsup ColorJitter"])]
        ours = times["whole view (selfsup Augment)"]
        crop_ratio = [k / s for k, s in zip(times["whole view, kornia crop"], ours)]
        coin_ratio = [k / s for k, s in zip(times["whole view, kornia coins"], ours)]
        rows[name] = {"ms": {label: round(statistics.median(v), 1) for label, v in times.items()},
                      "whole view, kornia crop / selfsup crop": round(statistics.median(crop_ratio), 2),
                      "whole view, kornia coins / selfsup coins": round(statistics.median(coin_ratio), 2),
                      "kornia / selfsup jitter": round(statistics.median(ratio), 2),
                      "ratio min-max": [round(min(ratio), 2), round(max(ratio), 2)]}
        print(json.dumps({name: rows[name]}), flush=True)
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "avx512_bf16")})
    report = {"date": datetime.date.today().isoformat(), "machine": describe_device(torch.device("cpu")),
              "cpu_flags": flags, "versions": library_versions(), "batch_size": args.batch_size, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']} ({' '.join(flags)}), batch {args.batch_size}, median ms over {args.rounds} rounds")
    print("| setting | kornia ColorJitter | selfsup ColorJitter | ratio (min-max) | whole view | "
          "whole view, kornia crop | ratio | whole view, kornia flip, gray, solarize, normalize | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        ms = row["ms"]
        print(f"| {name} | {ms['kornia ColorJitter']} | {ms['selfsup ColorJitter']} | "
              f"{row['kornia / selfsup jitter']} ({row['ratio min-max'][0]}-{row['ratio min-max'][1]}) | "
              f"{ms['whole view (selfsup Augment)']} | {ms['whole view, kornia crop']} | "
              f"{row['whole view, kornia crop / selfsup crop']} | {ms['whole view, kornia coins']} | "
              f"{row['whole view, kornia coins / selfsup coins']} |")


if __name__ == "__main__":
    main()
