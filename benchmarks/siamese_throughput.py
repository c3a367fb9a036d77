"""End-to-end training throughput of SimCLR, MoCo, BYOL and DINO: selfsup against lightly's
documented pipelines, around the same backbone, measured side by side in one process.

selfsup: ``Engine.train_step`` of each method's Fashion-MNIST preset, fed by the in-memory
loader (uint8 batch -> views on the device -> forward/backward/step -> teacher/queue update).
lightly (``pip install -e .[bench]``): the recipe of lightly's examples for the same method: a
Dataset of PIL images with the method's lightly transform (``SimCLRTransform``,
``MoCoV2Transform``, ``BYOLTransform``, ``DINOTransform``: same crop sizes and scales as the
preset), a DataLoader with ``--lightly-workers`` workers, lightly's heads and loss, momentum
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
import dataclasses
import datetime
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from selfsup.config import apply_overrides, find_config, read_yaml, resolve
from selfsup.engine.runtime import describe_device, library_versions
from selfsup.recipes.pretrain import Pretraining
from selfsup.files import write_json
from selfsup.views import AugmentSpec
from throughput import cpu_flags, interleaved_rounds, ours_end_to_end, scratch_folder, spread

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = dataclasses.asdict(AugmentSpec())


def make_trainer(method: str, args: argparse.Namespace, run_dir: Path) -> Pretraining:
    overrides = ["train.knn_every=0", "train.online_probe=false", "train.log_every=1000000", "backbone.name=resnet18",
                 f"backbone.width={args.width}", "backbone.patch_size=null", "backbone.registers=0", "backbone.drop_path=0.0",
                 f"train.device={args.device}", "train.precision=fp32"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    return Pretraining(resolve(apply_overrides(read_yaml(find_config(f"{method}_fashion_mnist")), overrides)),
                       run_dir, quiet=True)


def lightly_transform(method: str, trainer: Pretraining):  # noqa: ANN201
    """The method's lightly transform with the preset's crop sizes and scales (28 px, normalised)."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, DINOTransform, \
        MoCoV2Transform, SimCLRTransform

    size = trainer.splits.train.image_size
    normalize = {"mean": trainer.data_info.mean, "std": trainer.data_info.std}
    views = trainer.config.views
    if method == "dino":
        return DINOTransform(global_crop_size=size, local_crop_size=views["local_size"],
                             n_local_views=views["num_local"], random_gray_scale=0.0, normalize=normalize)
    augment = {**DEFAULTS, **views.get("augment", {})}  # unset keys: AugmentSpec's defaults
    common = {"input_size": size, "min_scale": augment["crop_scale"][0], "cj_prob": augment["jitter_p"],
              "random_gray_scale": augment["grayscale_p"], "normalize": normalize}
    if method == "simclr":
        return SimCLRTransform(**common, gaussian_blur=augment["blur_p"])
    if method == "moco":
        return MoCoV2Transform(**common, gaussian_blur=augment["blur_p"])
    second = {**DEFAULTS, **(views.get("augment_b") or augment)}
    return BYOLTransform(BYOLView1Transform(**common, gaussian_blur=augment["blur_p"]),
                         BYOLView2Transform(**common, gaussian_blur=second["blur_p"],
                                            solarization_prob=second["solarize_p"]))


class LightlyModel(nn.Module):
    """The per-method network of lightly's examples, around ``backbone``."""

    def __init__(self, method: str, backbone: nn.Module, settings: dict) -> None:
        from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, DINOProjectionHead, \
            MoCoProjectionHead, SimCLRProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.method, self.backbone = method, backbone
        dim = backbone.num_features
        if method == "simclr":
            self.head = SimCLRProjectionHead(dim, settings["proj_hidden_dim"], settings["proj_dim"])
            self.criterion = NTXentLoss(temperature=settings["temperature"])
        elif method == "moco":
            self.head = MoCoProjectionHead(dim, settings.get("proj_hidden_dim", 2048), settings.get("proj_dim", 128))
            self.criterion = NTXentLoss(temperature=settings.get("temperature", 0.2),
                                        memory_bank_size=(settings.get("queue_size", 65536),
                                                          settings.get("proj_dim", 128)))
        elif method == "byol":
            hidden, out = settings.get("proj_hidden_dim", 4096), settings.get("proj_dim", 256)
            self.head = BYOLProjectionHead(dim, hidden, out)
            self.predictor = BYOLPredictionHead(out, settings.get("pred_hidden_dim", hidden), out)
            self.criterion = NegativeCosineSimilarity()
        else:
            def dino_head() -> nn.Module:
                return DINOProjectionHead(dim, settings["hidden_dim"], settings["bottleneck_dim"],
                                          settings["out_dim"], freeze_last_layer=settings.get("freeze_last_layer", 1))

            self.head = dino_head()
            self.criterion = DINOLoss(output_dim=settings["out_dim"], warmup_teacher_temp_epochs=1)
        if method != "simclr":
            self.teacher_backbone = copy.deepcopy(backbone)
            if method == "dino":  # weight norm cannot be deep-copied: a second head, as lightly's example builds
                self.teacher_head = dino_head()
                self.teacher_head.load_state_dict(self.head.state_dict())
            else:
                self.teacher_head = copy.deepcopy(self.head)
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_head)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        from lightly.models.utils import update_momentum

        if self.method == "simclr":
            return self.criterion(self.head(self.backbone(views[0])), self.head(self.backbone(views[1])))
        update_momentum(self.backbone, self.teacher_backbone, 0.99)
        update_momentum(self.head, self.teacher_head, 0.99)
        if self.method == "dino":
            with torch.no_grad():
                teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
            student = [self.head(self.backbone(v)) for v in views]
            return self.criterion(teacher, student, epoch=0)
        with torch.no_grad():
            keys = [self.teacher_head(self.teacher_backbone(v)) for v in views]
        if self.method == "moco":
            return 0.5 * (self.criterion(self.head(self.backbone(views[0])), keys[1])
                          + self.criterion(self.head(self.backbone(views[1])), keys[0]))
        predictions = [self.predictor(self.head(self.backbone(v))) for v in views]
        return 0.5 * (self.criterion(predictions[0], keys[1]) + self.criterion(predictions[1], keys[0]))


def lightly_pipeline(method: str, trainer: Pretraining, workers: int):  # noqa: ANN201
    """A step of lightly's recipe for ``method``; None when lightly is absent."""
    try:
        transform = lightly_transform(method, trainer)
    except ImportError:
        return None
    from PIL import Image

    dataset = trainer.splits.train

    class PILDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int):  # noqa: ANN204
            pixels = dataset.images[i].permute(1, 2, 0).numpy()
            return transform(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)), 0

    batch_size = trainer.config.train.batch_size
    loader = torch.utils.data.DataLoader(PILDataset(), batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    device = trainer.device
    model = LightlyModel(method, copy.deepcopy(trainer.method.backbone), trainer.config.method).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.06, momentum=0.9)
    batches = iter(())

    def step() -> int:
        nonlocal batches
        try:
            views, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            views, _ = next(batches)
        loss = model.loss([v.to(device) for v in views])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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
