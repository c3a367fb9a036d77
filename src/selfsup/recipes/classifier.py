"""Training a classifier on labels with the engine: the recipe that fine-tuning, distillation,
continual and semi-supervised learning build on.

:class:`Classifier` is an encoder (pretrained or random) plus a linear head, trained with
cross-entropy; its parameter groups are ``backbone`` and ``head`` so the trunk can train at a
fraction of the head's rate (fine-tuning protocols: 1/10) and can be frozen for a warm-up of
the head (LwF's first phase) in the same fit. Any module with ``views``, ``param_groups``,
``classify`` and a forward returning ``{"loss"}`` can be fitted by :func:`fit_classifier`
(a distillation student, a semi-supervised learner).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig, apply_overrides, resolve
from ..data import BatchLoader, ImageDataset, Splits
from ..engine import Batch, Engine, Freeze, OptimConfig, Schedule, build_optimizer, checkpoint, dist
from ..engine.runtime import pick_device, resolve_precision, write_json
from ..errors import SelfsupError
from ..losses import distillation
from ..views import AugmentSpec, EvalView, ImageInfo, OneView

FINE_TUNE_AUGMENT = AugmentSpec(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0)
"""Crop and flip: the usual augmentation of supervised fine-tuning on small images."""


class Classifier(nn.Module):
    """``head(encoder(x))`` trained with cross-entropy on the labelled images of a batch.

    ``label_smoothing`` eps is distillation from a uniform teacher (SPEC 8): eps of the loss is
    KL(uniform || softmax(s)), the rest cross-entropy with the label, i.e. cross-entropy with
    targets (1 - eps) one-hot + eps / K (Szegedy et al. 2016), less the constant eps * log K.
    """

    encoder_prefix = "encoder"

    def __init__(self, encoder: nn.Module, num_classes: int, views: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise SelfsupError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.encoder, self.views, self.label_smoothing = encoder, views, label_smoothing
        self.head = nn.Linear(encoder.num_features, num_classes)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.encoder(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the network evaluation reads: the trained one (a learner that evaluates a moving
        average of its weights overrides this)."""
        return self.classify(x)

    def param_groups(self) -> list[dict]:
        return [{"name": "backbone", "params": list(self.encoder.parameters())},
                {"name": "head", "params": list(self.head.parameters())}]

    def forward(self, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        logits = self.classify(batch.views[0]).float()
        labelled = batch.targets >= 0
        if self.label_smoothing:
            uniform = torch.zeros_like(logits[labelled])
            loss = distillation(logits[labelled], uniform, 1.0, batch.targets[labelled], self.label_smoothing)
        else:
            loss = F.cross_entropy(logits[labelled], batch.targets[labelled])
        accuracy = (logits[labelled].argmax(1) == batch.targets[labelled]).float().mean()
        return {"loss": loss, "accuracy": accuracy}


@dataclass
class ClassifierTraining:
    """How a classifier is trained (defaults: the fine-tuning protocol of SimCLR / SPEC section 7)."""

    epochs: int = 30
    steps: int | None = None
    """A fixed number of optimisation steps instead of ``epochs`` (Selfie's protocol: the same
    schedule whatever the label fraction); None: ``epochs`` passes over the labelled images."""
    batch_size: int = 256
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.1, weight_decay=5e-4,
                                                                    warmup_epochs=0.0))
    backbone_lr_scale: float = 0.1
    """Trunk learning rate as a fraction of the head's (0 freezes the trunk: a linear probe)."""
    label_smoothing: float = 0.0
    """eps of :class:`Classifier`: the uniform-teacher special case of distillation."""
    head_warmup_epochs: float = 0.0
    """Epochs at the start in which only the head trains (trunk frozen, its BatchNorm statistics kept)."""
    layer_modes: dict[str, str] = field(default_factory=dict)
    """Transfer mode per stage of the trunk (SPEC 7): ``frozen`` (never trains, BatchNorm statistics
    kept), ``finetune`` (at ``backbone_lr_scale``; the default for stages not named) or ``retrain``
    (weights re-initialised, trained at the head's rate), e.g. ``{conv1: frozen, res5: retrain}``."""
    test_every: int = 1
    """Measure test top-1 every this many epochs (and after the last)."""
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10


class AccuracyMonitor:
    """Top-1 (%) of ``model.classify`` on a labelled set, in the deterministic evaluation view."""

    def __init__(self, model: nn.Module, dataset: ImageDataset, view: EvalView, batch_size: int = 512) -> None:
        self.model, self.dataset, self.view, self.batch_size = model, dataset, view, batch_size
        self.last: float | None = None
        self.results: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        accuracy = None
        if dist.is_main():
            if hasattr(self.model, "test_accuracies"):  # several tasks: a multi-task learner
                accuracy = self.model.test_accuracies(self.dataset, self.view)
            else:
                logits = classify_all(self.model, self.dataset.images, self.view, self.batch_size)
                accuracy = {"test_top1": 100.0 * (logits.argmax(1) == self.dataset.targets).float().mean().item()}
        self.results = dist.broadcast_object(accuracy)
        self.last = self.results["test_top1"]
        return dict(self.results)


@torch.no_grad()
def classify_all(model: nn.Module, images: torch.Tensor, view: nn.Module, batch_size: int = 512,
                 raw: bool = False) -> torch.Tensor:
    """``model.predict`` (the evaluated network; ``raw``: ``model.classify``, the trained one) of uint8
    ``images`` in the deterministic ``view``, in evaluation mode, batched on the model's device: fp32
    logits on the CPU (the model's mode is put back)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    view = view.to(device)
    network = model.classify if raw or not hasattr(model, "predict") else model.predict
    logits = [network(view(chunk.to(device))).float().cpu() for chunk in images.split(batch_size)]
    model.train(was_training)
    return torch.cat(logits)


def fit_classifier(model: nn.Module, train: ImageDataset, test: ImageDataset | None, run_dir: str | Path,
                   settings: ClassifierTraining, *, meta: dict[str, Any] | None = None, resume: bool = False,
                   unlabelled: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Fit ``model`` on the labelled images of ``train`` with the engine; test top-1 each epoch.

    ``unlabelled``: train on every image, its target -1 where it has no label (a distillation
    student, a semi-supervised learner). Checkpoints, metrics and the summary go to ``run_dir``
    like a pretraining run's.
    """
    run_dir = Path(run_dir)
    device = pick_device(settings.device)
    dist.init_from_env(device.type)
    precision = resolve_precision(settings.precision, device)
    training = train if unlabelled else train.select((train.targets >= 0).nonzero().squeeze(1))
    if len(training) < settings.batch_size:
        raise SelfsupError(f"{len(training)} {'' if unlabelled else 'labelled '}training images are fewer than a "
                           f"batch of {settings.batch_size}; lower the batch size")
    resume_from = checkpoint.prepare_run_dir(run_dir, resume) if dist.is_main() else None
    resume_from = dist.broadcast_object(resume_from)
    model.to(device)
    loader = BatchLoader(training, settings.batch_size // dist.world_size(), device=device, seed=settings.seed,
                         rank=dist.rank(), world_size=dist.world_size())
    steps_per_epoch = len(loader)
    if settings.steps is not None and settings.steps < 1:
        raise SelfsupError(f"steps must be positive, got {settings.steps}")
    schedule = Schedule.from_config(settings.optim, settings.steps or settings.epochs * steps_per_epoch,
                                    steps_per_epoch, settings.batch_size)
    scales = dict(settings.optim.lr_scales)
    frozen_trunk = settings.backbone_lr_scale == 0
    groups = model.param_groups()
    frozen_prefixes: list[str] = []
    if settings.layer_modes:
        if frozen_trunk:
            raise SelfsupError("backbone_lr_scale 0 freezes the whole trunk; with per-stage layer_modes give "
                               "the fine-tuned stages a rate (e.g. 0.1) and mark the others frozen")
        groups, frozen_prefixes = stage_groups(model, groups, settings.layer_modes, settings.backbone_lr_scale)
    elif not frozen_trunk:
        scales.setdefault("backbone", settings.backbone_lr_scale)
    groups = [g for g in groups if not (frozen_trunk and g["name"] == "backbone")]
    optimizer = build_optimizer(groups, dataclasses.replace(settings.optim, lr_scales=scales), schedule.peak_lr)
    warmup = round(settings.head_warmup_epochs * steps_per_epoch)
    freeze = tuple(Freeze(prefix, schedule.total_steps) for prefix in frozen_prefixes)
    if frozen_trunk or warmup:
        freeze += (Freeze("encoder.", schedule.total_steps if frozen_trunk else warmup),)
    mean, std = training.stats()
    monitor = AccuracyMonitor(model, test, EvalView(train.image_size, mean, std)) if test is not None else None
    # The test accuracy is logged every epoch but never chooses best.pt (that would select on test data).
    engine = Engine(model, loader, optimizer, schedule, run_dir=run_dir, device=device, precision=precision,
                    clip_grad=settings.optim.clip_grad,
                    clip_per_parameter=settings.optim.clip_mode == "per_parameter", freeze=freeze, monitor=monitor,
                    monitor_every=max(settings.test_every, 1),
                    meta={"classifier": True, **(meta or {})}, seed=settings.seed, log_every=settings.log_every,
                    quiet=quiet)
    if resume_from is not None:
        engine.restore(checkpoint.load(resume_from))
    else:
        engine.seed_streams()
    summary = engine.fit(resumed=resume_from is not None)
    if monitor is not None and monitor.last is not None:
        summary.update({name: round(value, 2) for name, value in monitor.results.items()})
        if dist.is_main():
            write_json(run_dir / "summary.json", summary)
    return summary


LAYER_MODES = ("frozen", "finetune", "retrain")


def stage_groups(model: nn.Module, groups: list[dict], modes: dict[str, str], trunk_scale: float
                 ) -> tuple[list[dict], list[str]]:
    """The ``backbone`` group of ``model`` split by stage of its trunk, each at the rate of its mode
    (``retrain`` stages re-initialised here); returns the groups and the prefixes of frozen stages."""
    encoder = model.encoder
    trunk_name, trunk = ("backbone.", encoder.backbone) if hasattr(encoder, "backbone") else ("", encoder)
    if not hasattr(trunk, "stage_prefixes"):
        raise SelfsupError(f"per-stage transfer modes need a ResNet-style trunk; {type(trunk).__name__} has no stages")
    stages = trunk.stage_prefixes()
    for stage, mode in modes.items():
        if stage not in stages:
            raise SelfsupError(f"layer_modes: no stage '{stage}'; this trunk has {', '.join(stages)}")
        if mode not in LAYER_MODES:
            raise SelfsupError(f"layer_modes.{stage}: unknown mode '{mode}'; use {', '.join(LAYER_MODES)}")
    named = dict(encoder.named_parameters())
    taken: set[str] = set()
    out, frozen = [g for g in groups if g["name"] != "backbone"], []
    for stage, prefixes in stages.items():
        mode = modes.get(stage, "finetune")
        full = [trunk_name + prefix for prefix in prefixes]
        names = [n for n in named if n.startswith(tuple(full))]
        taken.update(names)
        if mode == "frozen":
            frozen += ["encoder." + prefix for prefix in full]
            continue
        if mode == "retrain":
            for module_name, module in encoder.named_modules():
                if (module_name + ".").startswith(tuple(full)) and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        out.append({"name": f"backbone.{stage}", "params": [named[n] for n in names],
                    "lr_scale": 1.0 if mode == "retrain" else trunk_scale})
    rest = [p for n, p in named.items() if n not in taken]  # e.g. the head layers of a HeadTrunk
    if rest:
        out.append({"name": "backbone.rest", "params": rest, "lr_scale": trunk_scale})
    return out, frozen


def backbone_changes(student: list[str]) -> list[str]:
    """``student`` checked to be changes of a backbone section (``backbone.KEY=VALUE``): refused
    before anything is loaded."""
    bad = [item for item in student if not item.startswith("backbone.")]
    if bad:
        raise SelfsupError(f"student settings are backbone keys (backbone.name=..., backbone.width=...), got {bad}")
    return list(student)


def fresh_network(config: RunConfig, student: list[str], data: dict[str, Any], seed: int
                  ) -> tuple[RunConfig, nn.Module]:
    """A freshly initialised backbone for the images of ``data``: ``config``'s, with the ``student``
    changes (:func:`backbone_changes`) to its backbone section; the config it was built from."""
    config = resolve(apply_overrides(config.to_dict(), list(student)))
    torch.manual_seed(seed)
    return config, config.backbone.build(data["channels"], data["image_size"])


def classifier_meta(config: RunConfig, data: dict[str, Any], head_layers: int = 0, *, origin: str | None = None,
                    **facts: Any) -> dict[str, Any]:
    """What a classifier's checkpoints record so that ``load_encoder`` / ``load_classifier`` rebuild it:
    the config and data facts, the trunk under ``encoder`` (with its head layers and ``origin``, the
    name evaluations give it; default the config's method), the head's facts.
    Its evaluation uses the trunk's features: the pretraining method's own embedding (Selfie's,
    CPC's presets ask for it) is not part of a classifier."""
    saved = config.to_dict()
    saved["eval"]["features"] = "backbone"
    return {"config": saved, "data": data,
            "encoder": {"prefix": "encoder", "method": origin or config.method_name, "head_layers": head_layers},
            "classifier": facts}


def classifier_views(image: ImageInfo, augment: AugmentSpec = FINE_TUNE_AUGMENT) -> OneView:
    """The training view of a classifier: one mildly augmented view."""
    return OneView(image, augment=augment)


@dataclass
class StartingPoint:
    """The encoder a downstream strategy starts from (a checkpoint's, or a config's backbone at random
    initialisation), with the config and data facts it was built for and the splits to train on."""

    encoder: nn.Module
    config: RunConfig
    data: dict[str, Any]
    splits: Splits
    source: str
    """The checkpoint's resolved path, or ``random initialisation``."""

    @classmethod
    def load(cls, checkpoint_path: str | Path | None, config: RunConfig | None, overrides: list[str] = (), *,
             seed: int = 0, quiet: bool = False) -> StartingPoint:
        from ..data import load_splits
        from .evaluate import load_encoder

        if checkpoint_path is not None:
            encoder, config, state = load_encoder(checkpoint_path, overrides)
            splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
            return cls(encoder, config, state["data"], splits, str(Path(state["path"]).resolve()))
        if config is None:
            raise SelfsupError("give a checkpoint to start from, or a config (-c) for a random initialisation")
        splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
        data = splits.info()
        config, encoder = fresh_network(config, [], data, seed)
        return cls(encoder, config, data, splits, "random initialisation")

    def fresh_encoder(self) -> nn.Module:
        """A copy of the starting encoder: every run of a comparison starts from the same weights."""
        return copy.deepcopy(self.encoder)

    def eval_view(self) -> EvalView:
        return EvalView(self.data["image_size"], tuple(self.data["mean"]), tuple(self.data["std"]))
