"""The training loop shared by every method: one CPU, one GPU, or many via torchrun.

Per step: uint8 batch -> views on the device (no gradient, fp32) -> method forward under
autocast -> ``{"loss"}`` -> backward -> optimiser step -> ``method.after_step`` (EMA and
momentum updates). Around it: schedules, logging, the kNN monitor, and checkpoints that
hold everything needed to continue exactly (model with its buffers, optimiser, scaler,
step, every rank's RNG state).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoint, dist
from .config import RunConfig, to_yaml
from .data import BatchLoader, ImageDataset, load_dataset
from .errors import SelfsupError
from .eval.features import extract_features
from .eval.knn import knn_accuracy
from .methods import Method, build_method
from .metrics import MetricsLog
from .optim import build_optimizer, cosine_schedule, scaled_lr
from .runtime import Precision, pick_device, provenance, resolve_precision, write_json
from .views import EvalView


class NonFiniteLoss(SelfsupError):
    """The loss became NaN or infinite; the weights were not updated with it."""


def load_data(config: RunConfig, quiet: bool = False) -> tuple[ImageDataset, ImageDataset | None, dict[str, Any]]:
    """Training set, test set (None when absent) and the facts a checkpoint needs to rebuild the model."""
    cfg = config.data
    common = dict(name=cfg.name, root=cfg.root, image_size=cfg.image_size, download=cfg.download,
                  skip_bad=cfg.skip_bad, quiet=quiet)
    train = load_dataset(split=cfg.train_split, **common)
    if cfg.subset is not None:
        train = train.balanced_subset(cfg.subset, config.train.seed)
    try:
        test = load_dataset(split=cfg.test_split, **common)
    except SelfsupError as err:
        if cfg.name not in ("imagefolder", "tensors"):
            raise
        test = None  # user data without a test split: no kNN monitor
        if not quiet:
            print(f"note: no test split ({err}); the kNN monitor is off")
    mean, std = train.stats()
    info = {"dataset": cfg.name, "images": len(train), "channels": train.channels, "image_size": train.image_size,
            "mean": list(mean), "std": list(std), "classes": list(train.classes), "skipped": train.skipped}
    return train, test, info


def prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Create and check the run directory; return the checkpoint to resume from, if any."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SelfsupError(f"cannot write to run directory {run_dir}: {err.strerror or err}. "
                           "Choose a writable --run-dir.") from None
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise SelfsupError(f"{run_dir} already holds a run (checkpoints/last.pt). Pass --resume to continue it, "
                           "or choose another --run-dir; nothing was changed.")
    return last if (resume and last.exists()) else None


def check_disk_space(run_dir: Path, model: nn.Module) -> None:
    # last.pt + best.pt + a temporary copy while writing; the optimiser roughly doubles the weights.
    parameters = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    needed = 3 * 3 * parameters
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise SelfsupError(f"only {free / 2**20:.0f} MiB free in {run_dir}; checkpoints need about "
                           f"{needed / 2**20:.0f} MiB. Free space or choose another --run-dir.")


class Trainer:
    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
                 command: list[str] | None = None) -> None:
        self.config, self.run_dir, self.quiet = config, Path(run_dir), quiet
        train_cfg = config.train
        self.device = pick_device(train_cfg.device)
        dist.init_from_env(self.device.type)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.main = dist.is_main()
        if train_cfg.batch_size % self.world:
            raise SelfsupError(f"train.batch_size={train_cfg.batch_size} cannot be split evenly over "
                               f"{self.world} processes; use a multiple of {self.world}")
        self.batch_per_rank = train_cfg.batch_size // self.world
        self.precision: Precision = resolve_precision(train_cfg.precision, self.device)
        resume_from = prepare_run_dir(self.run_dir, resume) if self.main else None
        resume_from = dist.broadcast_object(resume_from)

        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank
        self.train_set, self.test_set, self.data_info = load_data(config, quiet=quiet or not self.main)
        self.method: Method = build_method(config, self.data_info).to(self.device)
        self.channels_last = (train_cfg.channels_last if train_cfg.channels_last is not None
                              else getattr(self.method.backbone, "prefers_channels_last", False))
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if self.main:
            check_disk_space(self.run_dir, self.method)
        self.model: nn.Module = self.method
        if self.world > 1:
            if train_cfg.sync_bn:
                if self.device.type != "cuda":
                    raise SelfsupError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                                       "on CPU leave it off: each process normalises over its own batch")
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            self.model = DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        on_device = config.data.on_device == "always" or (config.data.on_device == "auto" and self._fits_on_device())
        self.loader = BatchLoader(self.train_set, self.batch_per_rank, device=self.device, on_device=on_device,
                                  seed=train_cfg.seed, rank=self.rank, world_size=self.world)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise SelfsupError(f"train.batch_size={train_cfg.batch_size} is larger than the training set "
                               f"({len(self.train_set)} images{f' over {self.world} processes' if self.world > 1 else ''}); "
                               "lower the batch size")
        self.total_steps = train_cfg.epochs * self.steps_per_epoch
        if train_cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, train_cfg.max_steps)
        optim = config.optim
        self.peak_lr = scaled_lr(optim.lr, train_cfg.batch_size, optim.lr_scaling)
        self.warmup_steps = min(self.total_steps, round(optim.warmup_epochs * self.steps_per_epoch))
        self.optimizer = build_optimizer(
            self.method, optim.name, self.peak_lr, momentum=optim.momentum, nesterov=optim.nesterov,
            weight_decay=optim.weight_decay, exclude_norm_bias=optim.exclude_norm_bias, betas=optim.betas,
            trust_coefficient=optim.trust_coefficient)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.step, self.best, self.best_name = 0, None, None
        self.epoch_losses: list[float] = []
        self.train_seconds = 0.0  # time in training steps, summed over resumed sessions
        if resume_from is not None:
            self._restore(checkpoint.load(resume_from))  # also restores each rank's augmentation stream
        else:
            if resume and self.main and not quiet:
                print(f"--resume: {self.run_dir} holds no checkpoint yet; starting the run")
            torch.manual_seed(train_cfg.seed + 1000 * self.rank)  # per-rank augmentation streams
        self.log = MetricsLog(self.run_dir, enabled=self.main,
                              resume_step=self.step if resume_from is not None else None)
        if self.main:
            (self.run_dir / "config.yaml").write_text(to_yaml(config))
            write_json(self.run_dir / "meta.json", {**provenance(self.device, self.precision, command),
                                                    "data": self.data_info, "resumed_at_step": self.step})
        self._monitor_data = self._monitor_sets()

    # ------------------------------------------------------------ setup helpers

    def _fits_on_device(self) -> bool:
        if self.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.train_set.images.numel() < 0.25 * free

    def _monitor_sets(self) -> tuple[ImageDataset, ImageDataset] | None:
        cfg = self.config.train
        if cfg.knn_every <= 0 or self.test_set is None or not self.test_set.labeled:
            return None
        labeled = self.train_set.select((self.train_set.targets >= 0).nonzero().squeeze(1))
        if len(labeled) == 0:
            return None
        bank = labeled.balanced_subset(cfg.knn_bank_size, seed=cfg.seed)
        queries = self.test_set.balanced_subset(cfg.knn_test_size, seed=cfg.seed)
        return bank, queries

    # ------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        rng = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [])
        return {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
            "config": self.config.to_dict(), "data": self.data_info,
            "model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "step": self.step,
            "epoch": self.step // self.steps_per_epoch, "world_size": self.world,
            "rng": [list(states) for states in dist.gather_objects(rng)],
            "best": self.best, "best_name": self.best_name, "epoch_losses": self.epoch_losses,
            "train_seconds": self.train_seconds,
        }

    def _save(self, best: bool = False) -> None:
        state = self._state()  # collective: every rank takes part
        if self.main:
            checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "last.pt")
            if best:
                checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "best.pt")

    def _restore(self, state: dict[str, Any]) -> None:
        checkpoint.check_compatible(state, self.config.to_dict())
        if state["data"]["channels"] != self.data_info["channels"] or \
                state["data"]["image_size"] != self.data_info["image_size"]:
            raise SelfsupError(f"checkpoint {state['path']} was trained on {state['data']['channels']}-channel "
                               f"{state['data']['image_size']} px images, this data is "
                               f"{self.data_info['channels']}-channel {self.data_info['image_size']} px")
        checkpoint.load_weights(self.method, state["model"], state["path"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best, self.best_name = state["step"], state["best"], state["best_name"]
        self.epoch_losses = list(state["epoch_losses"])
        self.train_seconds = state["train_seconds"]
        if state["world_size"] == self.world:
            states = state["rng"][self.rank]
            torch.set_rng_state(states[0])
            if self.device.type == "cuda" and len(states) > 1:
                torch.cuda.set_rng_state(states[1], self.device)
        else:
            torch.manual_seed(self.config.train.seed + 1000 * self.rank + self.step)
            if self.main:
                print(f"note: checkpoint written by {state['world_size']} processes, resumed on {self.world}: "
                      "augmentation streams restart from the seed")
        if self.main and not self.quiet:
            print(f"resumed {state['path']} at step {self.step} (epoch {state['epoch']})")

    # ------------------------------------------------------------ training

    def _set_lr(self) -> float:
        lr = cosine_schedule(self.step, self.total_steps, self.peak_lr, self.config.optim.min_lr * self.peak_lr,
                             self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, images: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
        """One optimiser step on a uint8 batch; returns the loss averaged over processes."""
        lr = self._set_lr()
        with torch.no_grad():
            views = self.method.views(images)
        if self.channels_last:
            # Images only: labels and tile stacks (B, T, C, h, w) keep their layout.
            views = [v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 and v.is_floating_point() else v
                     for v in views]
        with self.precision.autocast(self.device):
            out = self.model(views, index)
        loss = out["loss"]
        # Every rank learns whether any rank diverged, so all stop together, before the update.
        stats = dist.all_reduce_mean(torch.stack([loss.detach().float(), (~torch.isfinite(loss)).float()]))
        loss_value, diverged = stats.tolist()
        if diverged:
            raise NonFiniteLoss(self._divergence_message(loss_value))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.method.after_step(self.step / self.total_steps)
        logged = {k: dist.all_reduce_mean(v.detach().float()).item() for k, v in out.items() if k != "loss"}
        return {"loss": loss_value, "lr": lr, **logged}

    def _divergence_message(self, value: float) -> str:
        last = self.run_dir / "checkpoints" / "last.pt"
        where = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        return (f"the loss became {value} at step {self.step} (epoch {self.step // self.steps_per_epoch}); "
                f"the weights were not updated with it and {where}. Lower optim.lr, check the data, "
                "or try train.precision=fp32; continue with --resume.")

    @torch.no_grad()
    def monitor_knn(self) -> float | None:
        """kNN top-1 (%) on the monitor subsets, computed on rank 0 and shared."""
        if self._monitor_data is None:
            return None
        accuracy = None
        if self.main:
            bank, queries = self._monitor_data
            view = EvalView(self.data_info["image_size"], self.data_info["mean"], self.data_info["std"])
            options = dict(view=view, autocast_dtype=self.precision.dtype, channels_last=self.channels_last,
                           batch_size=self.config.eval.batch_size)
            bank_features = extract_features(self.method.backbone, bank.images, **options)
            query_features = extract_features(self.method.backbone, queries.images, **options)
            accuracy = knn_accuracy(bank_features, bank.targets, query_features, queries.targets,
                                    len(self.data_info["classes"]), self.config.eval.knn_k,
                                    self.config.eval.knn_temperature)
        return dist.broadcast_object(accuracy)

    def fit(self) -> dict[str, Any]:
        cfg = self.config.train
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        images_per_step = self.batch_per_rank * self.world
        step_times: list[float] = []
        try:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.loader.set_epoch(epoch)
                steps_this_epoch = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
                bar = tqdm(total=steps_this_epoch, initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                           disable=self.quiet or not self.main, dynamic_ncols=True, unit="step")
                for images, _, index in self.loader.iterate(start):
                    tick = time.perf_counter()
                    row = self.train_step(images, index)
                    step_times.append(time.perf_counter() - tick)
                    self.train_seconds += step_times[-1]
                    self.epoch_losses.append(row["loss"])
                    throughput = images_per_step / (sum(step_times[-20:]) / len(step_times[-20:]))
                    eta = (self.total_steps - self.step) * images_per_step / throughput
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}", img_s=f"{throughput:.0f}",
                                    eta=_format_seconds(eta), refresh=False)
                    bar.update()
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        self.log.log("step", {"step": self.step, "epoch": epoch, **row,
                                              "img_per_s": round(throughput, 1)})
                    if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                        self._save()
                    if self.step >= self.total_steps:
                        break
                bar.close()
                self._end_epoch(epoch)
        finally:
            self.log.close()
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "best": self.best, "best_metric": self.best_name,
                   "train_seconds": round(self.train_seconds, 2), "train_minutes": round(self.train_seconds / 60, 2),
                   "img_per_s": round(images_per_step * self.step / max(self.train_seconds, 1e-9), 1)}
        if self.main:
            from .report import write_report

            write_json(self.run_dir / "summary.json", summary)
            write_report(self.run_dir)
        return summary

    def _end_epoch(self, epoch: int) -> None:
        finished_epoch = self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps
        if not finished_epoch or not self.epoch_losses:
            return
        losses, self.epoch_losses = self.epoch_losses, []
        cfg = self.config.train
        row: dict[str, Any] = {"step": self.step, "epoch": epoch + 1, "loss": sum(losses) / len(losses),
                               "minutes": round(self.train_seconds / 60, 3)}
        last_epoch = self.step >= self.total_steps
        if cfg.knn_every > 0 and ((epoch + 1) % cfg.knn_every == 0 or last_epoch):
            accuracy = self.monitor_knn()
            if accuracy is not None:
                row["knn_top1"] = round(accuracy, 2)
        # Best by the kNN monitor when there is one, else by the epoch's mean loss.
        name, value, better = (("knn_top1", row["knn_top1"], lambda new, old: new > old) if "knn_top1" in row
                               else ("loss", row["loss"], lambda new, old: new < old))
        is_best = self.best is None or self.best_name != name or better(value, self.best)
        if is_best:
            self.best, self.best_name = value, name
        self.log.log("epoch", row)
        if self.main and not self.quiet:
            knn = f", kNN top-1 {row['knn_top1']:.2f}%" if "knn_top1" in row else ""
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}{knn}")
        self._save(best=is_best)


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def pretrain(config: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
             command: list[str] | None = None) -> dict[str, Any]:
    """Pretrain ``config`` into ``run_dir``; returns a summary (also written to summary.json)."""
    trainer = Trainer(config, run_dir, resume=resume, quiet=quiet, command=command)
    summary = trainer.fit()
    if trainer.main and not quiet:
        print(json.dumps(summary, indent=2))
    return summary
