"""lightly's side of the side-by-side benchmarks: each shared method built from lightly's own parts.

For SimCLR, MoCo v2, BYOL, SimSiam, Barlow Twins and DINO: lightly's transforms (``SimCLRTransform``,
``MoCoV2Transform``, ``BYOLTransform``, ``SimSiamTransform``, ``DINOTransform``), heads, losses,
momentum utilities (``update_momentum``, ``cosine_schedule``), optimiser (``LARS``), schedules
(``cosine_warmup_schedule``, ``linear_warmup_schedule``), weight-decay groups
(``get_weight_decay_parameters``) and, for MoCo, ``SplitBatchNorm`` with ``batch_shuffle`` as in
lightly's CIFAR-10 benchmark, wired as lightly's examples wire them (one backbone pass per view, a
plain loop, a DataLoader of PIL images). Only the settings come from selfsup: a selfsup run config
(the method's preset) gives every hyper-parameter, so both sides train the same method at the same
settings: backbone, epochs, batch, crop scales and jitter, head sizes, temperatures, queue, momenta,
optimiser, learning rate and its warm-up and decay, weight decay, clipping, precision.

Where lightly's transform cannot express a preset's views (different jitter per view, another crop
ratio), :func:`lightly_transform` refuses with the reason rather than train something else.

Made equal to selfsup's settings where lightly's defaults differ (each a comment at its line): SimCLR's
head without lightly's output BatchNorm, MoCo's two directions in one loss call (against the queue as
it was before the step, as selfsup and MoCo's CIFAR demo), DINO's second global view jittered as the
others (lightly 1.6 drops ``cj_strength`` there), MoCo's queue saved with the weights for a resume.

Differences that are lightly's recipe, kept and stated:

* one backbone pass per view (B images per BatchNorm, the heads' too; DINO: 8 student and 2 teacher
  passes), where selfsup passes the views of a batch together for SimCLR and MoCo (2B) and DINO (2
  student passes, 1 teacher pass), and, since 2026-12-04, one per view for BYOL, SimSiam and Barlow
  Twins as their official code (``method.views_in_one_pass``; rows before that date ran one pass);
* views drawn per image in PIL (DINO's crops bicubic, antialiased, rounded to uint8 after each
  operation, jitter order random per image) where selfsup draws them on the batch (bilinear; kornia's
  crop before 2026-12-04, its own batched one since);
* schedules from ``lightly.utils.scheduler``: warm-up reaching the peak one step earlier, cosine and
  momentum ends one step earlier; DINO's frozen last layer in whole epochs;
* lightly's LARS trust ratio ``||w|| / (||g|| + wd ||w||)`` where selfsup's is ``||w|| / ||g + wd w||``;
* lightly's losses computed in the autocast dtype (bf16) where selfsup's cast to fp32 first;
* a resume restarts at the last finished epoch (selfsup's: at the step, bit-exact).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from selfsup.config import RunConfig
from selfsup.data import load_splits
from selfsup.engine.optim import scaled_lr
from selfsup.engine.runtime import pick_device, resolve_precision
from selfsup.export.backbone import write_weights
from selfsup.files import write_json
from selfsup.views import AugmentSpec

METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "dino")
AUGMENT_DEFAULTS = dataclasses.asdict(AugmentSpec())


def _spec(views: dict, key: str, fallback: str | None = None) -> dict:
    given = views.get(key) or (views.get(fallback) if fallback else None) or {}
    spec = {**AUGMENT_DEFAULTS, **given}
    if tuple(spec["crop_ratio"]) != AUGMENT_DEFAULTS["crop_ratio"] or spec["rotation_degrees"]:
        raise ValueError(f"views.{key}: lightly's transforms crop with ratio (3/4, 4/3) and do not rotate")
    return spec


def _colour(spec: dict) -> dict:
    """lightly's jitter arguments: strength 1 times each factor, so the factors are the preset's."""
    bright, contrast, saturation, hue = spec["jitter"]
    return {"cj_prob": spec["jitter_p"], "cj_strength": 1.0, "cj_bright": bright, "cj_contrast": contrast,
            "cj_sat": saturation, "cj_hue": hue, "random_gray_scale": spec["grayscale_p"], "hf_prob": spec["flip_p"],
            "sigmas": tuple(spec["blur_sigma"])}


def lightly_transform(method: str, config: RunConfig, size: int, mean, std) -> Callable:  # noqa: ANN001
    """The method's lightly transform with every setting of the preset's views (a PIL image -> views)."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, DINOTransform, \
        MoCoV2Transform, SimCLRTransform, SimSiamTransform

    views, normalize = config.views, {"mean": list(mean), "std": list(std)}
    if method == "dino":
        first, second = _spec(views, "global_augment"), _spec(views, "global_augment_b", "global_augment")
        local = _spec(views, "local_augment")
        if not _colour(first) == _colour(second) == _colour(local) or first["crop_scale"] != second["crop_scale"]:
            raise ValueError("lightly's DINOTransform jitters every crop alike and crops both global views at one "
                             "scale; the preset's views differ")
        if first["solarize_p"] or local["solarize_p"]:
            raise ValueError("lightly's DINOTransform solarizes the second global view only")
        if views.get("global_size") not in (None, size):
            raise ValueError("lightly's side crops DINO's global views at the image's size")
        # lightly 1.6's DINOTransform builds its second global view without ``cj_strength`` (its default,
        # 0.5, applies there): strength 0.5 with every factor doubled gives the preset's jitter on every view
        colour = {**_colour(first), "cj_strength": 0.5,
                  **{key: 2 * _colour(first)[key] for key in ("cj_bright", "cj_contrast", "cj_sat", "cj_hue")}}
        return DINOTransform(global_crop_size=size, global_crop_scale=tuple(first["crop_scale"]),
                             local_crop_size=views["local_size"], local_crop_scale=tuple(local["crop_scale"]),
                             n_local_views=views["num_local"], **colour,
                             gaussian_blur=(first["blur_p"], second["blur_p"], local["blur_p"]),
                             solarization_prob=second["solarize_p"], normalize=normalize)

    def common(spec: dict) -> dict:
        if spec["crop_scale"][1] != 1.0:
            raise ValueError("lightly's transforms crop up to the whole image (crop_scale ending at 1)")
        return {"input_size": size, "min_scale": spec["crop_scale"][0], **_colour(spec),
                "gaussian_blur": spec["blur_p"], "normalize": normalize}

    first = _spec(views, "augment")
    if method in ("byol", "barlow_twins"):  # lightly's Barlow Twins example uses BYOL's two views
        second = _spec(views, "augment_b", "augment")
        return BYOLTransform(BYOLView1Transform(**common(first), solarization_prob=first["solarize_p"]),
                             BYOLView2Transform(**common(second), solarization_prob=second["solarize_p"]))
    if first["solarize_p"]:
        raise ValueError(f"lightly's {method} transform does not solarize")
    if views.get("augment_b"):
        raise ValueError(f"lightly's {method} transform draws both views alike; the preset sets views.augment_b")
    kind = {"simclr": SimCLRTransform, "moco": MoCoV2Transform, "simsiam": SimSiamTransform}[method]
    return kind(**common(first))


class LightlyMethod(nn.Module):
    """One method as lightly's examples build it, around ``backbone``, at the preset's settings.

    ``loss`` takes the list of views of a batch and the step; ``after_step`` moves the teachers.
    The loss has the scale selfsup's has (which the learning rate was chosen for): MoCo's and
    BYOL's two directions summed, BYOL's ``2 - 2 cos`` of the paper, the rest as lightly's.
    """

    def __init__(self, method: str, backbone: nn.Module, settings: dict, total_steps: int,
                 steps_per_epoch: int) -> None:
        from lightly.loss import BarlowTwinsLoss, DINOLoss, NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import BarlowTwinsProjectionHead, BYOLPredictionHead, BYOLProjectionHead, \
            DINOProjectionHead, MoCoProjectionHead, SimSiamPredictionHead
        from lightly.models.modules.heads import ProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        if method not in METHODS:
            raise ValueError(f"lightly's side has {', '.join(METHODS)}, not {method}")
        self.method, self.settings, self.backbone = method, settings, backbone
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        dim, self.predictor = backbone.num_features, None
        if method == "simclr":
            # lightly's SimCLRProjectionHead ends with a BatchNorm; selfsup's (and the paper's v1 code's)
            # output layer is a plain linear one: the same head from lightly's parts
            hidden, layers = settings["proj_hidden_dim"], settings.get("proj_layers", 2)
            self.head = ProjectionHead([(dim if i == 0 else hidden, hidden, nn.BatchNorm1d(hidden), nn.ReLU())
                                        for i in range(layers - 1)] +
                                       [(hidden if layers > 1 else dim, settings["proj_dim"], None, None)])
            self.criterion = NTXentLoss(temperature=settings["temperature"])
        elif method == "moco":
            from lightly.models.batchnorm import SplitBatchNorm

            if settings.get("version", 2) != 2:
                raise ValueError("the side-by-side runs MoCo v2")
            self.symmetric = settings.get("symmetric", False)
            splits = settings.get("bn_splits", 8)
            if splits > 1:  # lightly's CIFAR-10 benchmark: the ResNet's BatchNorms split in 8
                _replace_batch_norms(backbone, lambda bn: SplitBatchNorm(bn.num_features, splits))
            self.head = MoCoProjectionHead(dim, settings["proj_hidden_dim"], settings["proj_dim"])
            self.criterion = NTXentLoss(temperature=settings["temperature"],
                                        memory_bank_size=(settings["queue_size"], settings["proj_dim"]))
        elif method == "byol":
            out = settings["proj_dim"]
            self.head = BYOLProjectionHead(dim, settings["proj_hidden_dim"], out)
            self.predictor = BYOLPredictionHead(out, settings["pred_hidden_dim"], out)
            self.criterion = NegativeCosineSimilarity()
        elif method == "simsiam":
            hidden = out = settings["proj_dim"]
            layers = settings.get("proj_layers", 3)
            # lightly's SimSiamProjectionHead has the paper's 3 layers; the CIFAR setting's 2 from its parts
            blocks = [(dim if i == 0 else hidden, hidden, nn.BatchNorm1d(hidden), nn.ReLU()) for i in range(layers - 1)]
            blocks.append((hidden if layers > 1 else dim, out, nn.BatchNorm1d(out, affine=False), None))
            self.head = ProjectionHead(blocks)
            self.predictor = SimSiamPredictionHead(out, settings["pred_hidden_dim"], out)
            self.criterion = NegativeCosineSimilarity()
        elif method == "barlow_twins":
            if settings.get("proj_layers", 3) != 3:
                raise ValueError("lightly's Barlow Twins head has 3 layers")
            self.head = BarlowTwinsProjectionHead(dim, settings["proj_dim"], settings["proj_dim"])
            self.criterion = BarlowTwinsLoss(lambda_param=settings["off_diagonal_weight"])
        else:
            def dino_head() -> nn.Module:
                return DINOProjectionHead(dim, settings["hidden_dim"], settings["bottleneck_dim"], settings["out_dim"],
                                          freeze_last_layer=settings.get("freeze_last_layer", 1),
                                          norm_last_layer=settings.get("norm_last_layer", True))

            self.head = dino_head()
            self.criterion = DINOLoss(output_dim=settings["out_dim"], student_temp=settings["student_temperature"],
                                      teacher_temp=settings["teacher_temperature"],
                                      center_momentum=settings.get("center_momentum", 0.9))
        self.teacher_backbone = self.teacher_head = None
        if method in ("moco", "byol", "dino"):
            self.teacher_backbone = copy.deepcopy(backbone)
            if method == "dino":  # weight norm cannot be deep-copied: a second head, as lightly's example builds
                self.teacher_head = dino_head()
                self.teacher_head.load_state_dict(self.head.state_dict())
            else:
                self.teacher_head = copy.deepcopy(self.head)
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_head)

    def evaluated_backbone(self) -> nn.Module:
        """The network the paper evaluates: DINO's teacher, else the online backbone."""
        return self.teacher_backbone if self.method == "dino" else self.backbone

    def momentum_at(self, step: int) -> float:
        """MoCo's constant key momentum; BYOL's and DINO's cosine from ``base_momentum`` to 1."""
        from lightly.utils.scheduler import cosine_schedule

        if self.method == "moco":
            return self.settings["momentum"]
        return cosine_schedule(step, self.total_steps, self.settings["base_momentum"],
                               self.settings.get("final_momentum", 1.0))

    def loss(self, views: list[torch.Tensor], step: int) -> torch.Tensor:
        from lightly.models.utils import batch_shuffle, batch_unshuffle
        from lightly.utils.scheduler import linear_warmup_schedule

        method = self.method
        if method in ("simclr", "barlow_twins"):
            return self.criterion(self.head(self.backbone(views[0])), self.head(self.backbone(views[1])))
        if method == "simsiam":
            z = [self.head(self.backbone(v)) for v in views]
            p = [self.predictor(x) for x in z]
            return 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
        if method == "moco":
            directions = [(0, 1), (1, 0)] if self.symmetric else [(0, 1)]
            queries = [self.head(self.backbone(views[q])) for q, _ in directions]
            keys = []
            with torch.no_grad():
                for _, k in directions:
                    shuffled, order = batch_shuffle(views[k])
                    keys.append(batch_unshuffle(self.teacher_head(self.teacher_backbone(shuffled)), order))
            # One call: both directions against the queue as it was before this step, then every key
            # enqueued (two calls would make a query's own key from the other direction its negative);
            # times the directions, so the two directions are summed as on selfsup's side
            return len(directions) * self.criterion(torch.cat(queries), torch.cat(keys))
        if method == "byol":
            p = [self.predictor(self.head(self.backbone(v))) for v in views]
            with torch.no_grad():
                z = [self.teacher_head(self.teacher_backbone(v)) for v in views]
            return 4 + 2 * (self.criterion(p[0], z[1]) + self.criterion(p[1], z[0]))
        warmup = round(self.settings.get("teacher_warmup", 0.0) * self.total_steps)
        start = self.settings.get("teacher_temperature_start") or self.settings["teacher_temperature"]
        temperature = linear_warmup_schedule(step, warmup, start, self.settings["teacher_temperature"])
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, teacher_temp=temperature)

    def after_backward(self, step: int) -> None:
        """DINO's frozen last layer (lightly's ``cancel_last_layer_gradients``, in whole epochs), before clipping."""
        if self.method == "dino":
            self.head.cancel_last_layer_gradients(step // self.steps_per_epoch)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        from lightly.models.utils import update_momentum

        if self.teacher_backbone is None:
            return
        momentum = self.momentum_at(step)
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.head, self.teacher_head, momentum)

    def queue_state(self) -> dict[str, torch.Tensor]:
        """MoCo's queue: lightly keeps it out of the state dict (non-persistent buffers), a resume needs it."""
        if self.method != "moco":
            return {}
        bank = self.criterion.memory_bank
        return {"bank": bank.bank.clone(), "bank_ptr": bank.bank_ptr.clone()}

    def load_queue_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.criterion.memory_bank.bank.copy_(state["bank"])
            self.criterion.memory_bank.bank_ptr.copy_(state["bank_ptr"])

    def parameter_groups(self, exempt_lr_scale: float = 1.0) -> list[dict]:
        """lightly's weight-decay split (no decay, hence no LARS scaling, for norms and biases; these at
        ``exempt_lr_scale`` of the rate: lightly's Barlow Twins benchmark trains them at 0.0048 against the
        weights' 0.2, as the paper); SimSiam's predictor at the peak rate throughout when the preset says so."""
        from lightly.models.utils import get_weight_decay_parameters

        fixed = self.method == "simsiam" and self.settings.get("fix_predictor_lr", True)
        parts = [(m, False) for m in (self.backbone, self.head)] + \
                ([(self.predictor, fixed)] if self.predictor is not None else [])
        groups = []
        for module, fixed_lr in parts:
            decayed, exempt = get_weight_decay_parameters([module])
            groups += [{"params": [p for p in decayed if p.requires_grad], "wd_scale": 1.0, "fixed_lr": fixed_lr,
                        "lr_scale": 1.0},
                       {"params": [p for p in exempt if p.requires_grad], "wd_scale": 0.0, "fixed_lr": fixed_lr,
                        "lr_scale": exempt_lr_scale}]
        return [group for group in groups if group["params"]]


def _replace_batch_norms(module: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, make(child))
        else:
            _replace_batch_norms(child, make)


def torchvision_weights(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's torchvision state dict; a SplitBatchNorm's statistics averaged over its splits, as
    lightly's ``SplitBatchNorm.train(False)`` does."""
    from lightly.models.batchnorm import SplitBatchNorm

    backbone = copy.deepcopy(backbone).cpu().eval()
    weights = {}
    for name, module in backbone.net.named_modules():
        if isinstance(module, SplitBatchNorm):
            plain = nn.BatchNorm2d(module.num_features)
            plain.load_state_dict({"weight": module.weight, "bias": module.bias,
                                   "running_mean": module.running_mean[:module.num_features],
                                   "running_var": module.running_var[:module.num_features],
                                   "num_batches_tracked": module.num_batches_tracked})
            weights.update({f"{name}.{k}": v for k, v in plain.state_dict().items()})
    state = {k: v for k, v in backbone.net.state_dict().items() if k.rsplit(".", 1)[0] not in
             {n for n, m in backbone.net.named_modules() if isinstance(m, SplitBatchNorm)}}
    return {k: v.contiguous() for k, v in {**state, **weights}.items()}


def build_optimizer(groups: list[dict], config: RunConfig, peak_lr: float) -> torch.optim.Optimizer:
    from lightly.utils.lars import LARS

    optim = config.optim
    for group in groups:
        group["weight_decay"] = optim.weight_decay * group["wd_scale"]
        group["lr"] = peak_lr * group["lr_scale"]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "lars":
        return LARS(groups, lr=peak_lr, momentum=optim.momentum, trust_coefficient=optim.trust_coefficient)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=optim.betas)


class PILImages(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images as PIL images through ``transform``, as lightly's examples read data."""

    def __init__(self, images: torch.Tensor, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):  # noqa: ANN204
        from PIL import Image

        pixels = self.images[index].permute(1, 2, 0).numpy()
        return self.transform(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))


def train_with_lightly(method: str, config: RunConfig, run_dir: Path, *, workers: int = 2,
                       channels_last: bool | None = None, progress: bool = True) -> dict:
    """Train ``method`` with lightly's parts at ``config``'s settings; write ``run_dir/backbone.safetensors``
    (torchvision names) and ``run_dir/summary.json``. Resumes from the last finished epoch."""
    from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule

    run_dir.mkdir(parents=True, exist_ok=True)
    summary_file, state_file = run_dir / "summary.json", run_dir / "last-epoch.pt"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    train, optim = config.train, config.optim
    device = pick_device(train.device)
    precision = resolve_precision(train.precision, device)
    if channels_last is None:  # selfsup's rule without a measurement: channels_last with bf16 or on a GPU
        channels_last = device.type == "cuda" or precision.dtype is not None
    # lightly's SplitBatchNorm views (N, C, H, W) as (N / s, C s, H, W): only a contiguous batch allows it
    channels_last = channels_last and not (method == "moco" and config.method.get("bn_splits", 8) > 1)
    torch.manual_seed(train.seed)
    splits = load_splits(config.data, seed=train.seed, quiet=True)
    info = splits.info()
    backbone = config.backbone.build(info.channels, info.image_size)
    transform = lightly_transform(method, config, info.image_size, info.mean, info.std)
    loader = torch.utils.data.DataLoader(
        PILImages(splits.train.images, transform), batch_size=train.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(train.seed))
    steps_per_epoch = len(loader)
    total = train.epochs * steps_per_epoch
    model = LightlyMethod(method, backbone, dict(config.method), total, steps_per_epoch).to(device)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    peak = scaled_lr(optim.lr, train.batch_size, optim.lr_scaling)
    optimizer = build_optimizer(model.parameter_groups(optim.exempt_lr_scale), config, peak)
    warmup = min(total, round(optim.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)  # fp16 on older GPUs, as selfsup
    epoch, seconds, losses = 0, 0.0, []
    if state_file.is_file():
        state = torch.load(state_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        model.load_queue_state(state["queue"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, seconds, losses = state["epoch"], state["seconds"], state["losses"]
        loader.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=epoch * steps_per_epoch, desc=f"lightly {method}", unit="step")
    while epoch < train.epochs:
        model.train()
        started, running = time.perf_counter(), []
        for index, views in enumerate(loader):
            step = epoch * steps_per_epoch + index
            lr = cosine_warmup_schedule(step, total, peak, optim.min_lr * peak, warmup, 0.0) if warmup else \
                cosine_schedule(step, total, peak, optim.min_lr * peak)
            decay = optim.weight_decay if optim.weight_decay_end is None else \
                cosine_schedule(step, total, optim.weight_decay, optim.weight_decay_end)
            for group in optimizer.param_groups:
                group["lr"] = (peak if group["fixed_lr"] else lr) * group["lr_scale"]
                group["weight_decay"] = decay * group["wd_scale"]
            views = [v.to(device, non_blocking=True) for v in views]
            if channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with precision.autocast(device):
                loss = model.loss(views, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            model.after_backward(step)
            if optim.clip_grad is not None:
                scaler.unscale_(optimizer)
                parameters = [p for p in model.parameters() if p.grad is not None]
                if optim.clip_mode == "per_parameter":
                    for parameter in parameters:
                        torch.nn.utils.clip_grad_norm_(parameter, optim.clip_grad)
                else:
                    torch.nn.utils.clip_grad_norm_(parameters, optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            model.after_step(step)
            running.append(loss.item())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"lightly {method}: the loss is {loss.item()} at step {step}")
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{running[-1]:.4f}")
        seconds += time.perf_counter() - started
        losses.append(sum(running) / len(running))
        epoch += 1
        partial = state_file.with_name(state_file.name + ".partial")
        torch.save({"model": model.state_dict(), "queue": model.queue_state(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "seconds": seconds, "losses": losses, "generator": loader.generator.get_state(),
                    "torch_rng": torch.get_rng_state()}, partial)
        partial.replace(state_file)
    if bar is not None:
        bar.close()
    write_weights(torchvision_weights(model.evaluated_backbone()), run_dir / "backbone.safetensors")
    summary = {"method": method, "steps": total, "epochs": train.epochs, "batch_size": train.batch_size,
               "img_per_s": round(total * train.batch_size / seconds, 1), "train_minutes": round(seconds / 60, 2),
               "precision": precision.name, "channels_last": channels_last, "loader_workers": workers,
               "epoch_losses": [round(x, 5) for x in losses],
               "evaluated": "teacher" if method == "dino" else "backbone"}
    write_json(summary_file, summary)
    state_file.unlink()
    return summary
