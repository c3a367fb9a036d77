"""The one training loop: any module that returns ``{"loss": ...}`` on batches, on one CPU, one
GPU, or many via torchrun.

Per step: uint8 images -> ``module.views`` (no gradient, fp32) -> ``module(Batch(views, targets,
index), progress)`` under autocast -> backward -> frozen parts' gradients dropped -> clipping ->
optimiser step -> ``module.after_step(progress)`` (EMA and momentum updates). Around it: the
learning-rate and weight-decay schedules, logging, a monitor at epoch ends, checkpoints that
hold everything needed to continue exactly (the module with its buffers, optimiser, scaler,
step, every rank's RNG state), and a stop on a non-finite loss. Pretraining, fine-tuning,
distillation and the other recipes are all fits of this loop.
"""
from __future__ import annotations

import signal
import time
from contextlib import closing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..files import write_json
from . import checkpoint, dist
from .contracts import BadData, Freeze, Images, Loader, NonFiniteLoss, Probe, base_images
from .metrics import MetricsLog
from .optim import Schedule, apply_schedule
from .preemption import Preempted, StopRequests
from .runtime import Precision
from .steps import (FrozenParts, clip_gradients, divergence_message, format_seconds, forward_views,
                    non_finite_state, seconds_per_step)


class Engine:
    """Fits ``module`` (a :class:`~selfsup.engine.Trainable`: forward(batch, progress) -> {"loss", ...}) with ``optimizer``
    on ``loader``.

    ``monitor`` (optional) runs at epoch ends every ``monitor_every`` epochs and at the end and
    returns metrics. ``probe`` (optional) trains after every step and reports at every epoch end
    (the online linear probe). One criterion chooses ``best.pt`` for the whole run: ``best_by``, a
    metric of the monitor or the probe (higher is better; epochs where it is not reported are not
    candidates), or with ``best_by`` None the epoch's mean loss (lower is better). ``meta`` is
    stored in every checkpoint (config, data facts).
    """

    def __init__(self, module: nn.Module, loader: Loader, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                 run_dir: str | Path, device: torch.device, precision: Precision, channels_last: bool = False,
                 clip_grad: float | None = None, clip_per_parameter: bool = False, freeze: tuple[Freeze, ...] = (),
                 monitor: Callable[[], dict[str, float]] | None = None, monitor_every: int = 1,
                 probe: Probe | None = None, best_by: str | None = None, meta: dict[str, Any] | None = None, seed: int = 0,
                 log_every: int = 10, checkpoint_every_steps: int = 0, checkpoint_every_minutes: float = 0.0,
                 quiet: bool = False) -> None:
        self.module, self.loader, self.optimizer, self.schedule = module, loader, optimizer, schedule
        self.run_dir, self.device, self.precision = Path(run_dir), device, precision
        self.channels_last, self.clip_grad, self.clip_per_parameter = channels_last, clip_grad, clip_per_parameter
        if best_by is not None and monitor is None and probe is None:
            raise ValueError(f"best.pt cannot be chosen by '{best_by}' without a monitor that measures it")
        self.monitor, self.monitor_every, self.probe, self.best_by = monitor, monitor_every, probe, best_by
        self.meta, self.seed, self.quiet = meta or {}, seed, quiet
        self.log_every, self.checkpoint_every_steps = log_every, checkpoint_every_steps
        self.checkpoint_every_minutes = checkpoint_every_minutes
        self.saved_at = time.monotonic()  # when last.pt was last written (or the run started)
        self.save_due = False
        self.rank, self.world, self.main = dist.rank(), dist.world_size(), dist.is_main()
        self.steps_per_epoch = len(loader)
        self.freezes = FrozenParts(module, freeze)
        # DDP wraps the whole method without broadcasting buffers: banks, queues and teacher BatchNorm
        # statistics are kept identical by their own gathered updates (broadcasting them would send
        # 31 MB a step for NPID on 60k images); a teacher's frozen parameters take no gradient.
        self.model: nn.Module = module if self.world == 1 else DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_scaler)
        self.step, self.best, self.best_name = 0, None, None
        self.epoch_losses: list[float] = []
        self.train_seconds = 0.0  # time in training steps, summed over resumed sessions
        self.log: MetricsLog | None = None
        self.stop, self.stopping = StopRequests(), False

    # ------------------------------------------------------------ one step

    def train_step(self, images: Images, targets: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
        """One optimiser step on a uint8 batch; returns the loss averaged over processes."""
        total = self.schedule.total_steps
        lr, weight_decay = self.schedule.lr(self.step), self.schedule.weight_decay_at(self.step)
        apply_schedule(self.optimizer, lr, weight_decay, self.schedule.peak_lr)
        self.freezes.set_norm_modes(self.step)
        out = forward_views(self.module, images, targets, index, self.step / total, precision=self.precision,
                            device=self.device, channels_last=self.channels_last, model=self.model)
        loss = out["loss"]
        # Every rank learns whether any rank diverged (all stop together, before the update) or was
        # asked to stop (all stop after this update).
        detached = loss.detach().float()
        asked = detached.new_full((), float(self.stop.requested is not None))  # filled on the device: no copy
        # Rank 0's clock decides when a timed checkpoint is due, for every rank (the save is collective).
        due = detached.new_full((), float(self.main and self.checkpoint_every_minutes > 0 and
                                          time.monotonic() - self.saved_at >= 60 * self.checkpoint_every_minutes))
        stats = dist.all_reduce_mean(torch.stack([detached, (~torch.isfinite(loss)).float(), asked, due]))
        loss_value, diverged, stopping, due = stats.tolist()
        self.stopping, self.save_due = stopping > 0, due > 0
        if diverged:
            raise NonFiniteLoss(self._divergence_message(f"the loss became {loss_value}"))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.freezes.drop_gradients(self.step)
        row: dict[str, float] = {"loss": loss_value, "lr": lr}
        if self.schedule.final_weight_decay is not None:
            row["weight_decay"] = weight_decay
        if self.clip_grad is not None:
            row["grad_norm"] = clip_gradients(self.optimizer, self.scaler, self.clip_grad, self.clip_per_parameter)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        after_step = getattr(self.module, "after_step", None)
        if after_step is not None:
            after_step(self.step / total)
        if self.probe is not None:
            row.update(self.probe.step(base_images(images), targets))
        row.update({k: dist.all_reduce_mean(v.detach().float().to(loss.device)).item() for k, v in out.items()
                    if k != "loss"})
        return row

    def time_steps(self, count: int, warmup: int = 1) -> float:
        """Seconds per training step on real batches, then undone (:func:`~.steps.seconds_per_step`)."""
        return seconds_per_step(self, count, warmup)

    def _divergence_message(self, what: str, when: str = "at", updated: bool = False) -> str:
        return divergence_message(what, self.step, self.step // self.steps_per_epoch, self.run_dir, when, updated)

    # ------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        rng = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [])
        return {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION, **self.meta,
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "step": self.step, "total_steps": self.schedule.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "epoch": self.step // self.steps_per_epoch, "world_size": self.world,
            "rng": [list(states) for states in dist.gather_objects(rng)],
            "best": self.best, "best_name": self.best_name, "epoch_losses": self.epoch_losses,
            "train_seconds": self.train_seconds,
            **({"online_probe": self.probe.state_dict()} if self.probe is not None else {}),
        }

    def stop_if_diverged(self) -> None:
        """A divergence that keeps the loss finite (a collapse whose BatchNorm variances overflow)
        stops the run: checked at every metric row and before every checkpoint write, so that it is
        never written over the last good one; every rank decides alike."""
        bad = non_finite_state(self.module)
        if dist.all_reduce_mean(torch.tensor(float(bad is not None), device=self.device)).item() > 0:
            raise NonFiniteLoss(self._divergence_message(f"the model's {bad} became non-finite", "by", updated=True))

    def save(self, best: bool = False) -> None:
        self.saved_at = time.monotonic()
        self.stop_if_diverged()
        state = self.state()  # collective: every rank takes part
        if self.main:
            # best.pt first: last.pt records the best so far, and that record must never be ahead of the
            # file (a kill between the two writes leaves a best.pt one epoch newer than the record,
            # which the resumed run writes again with the same state).
            if best:
                checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "best.pt")
            checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "last.pt")

    @property
    def criterion(self) -> dict[str, Any]:
        """What chooses best.pt in this run (recorded in meta.json and the summary)."""
        return {"metric": self.best_by or "loss", "higher_is_better": self.best_by is not None}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of this run (the caller checked that it fits)."""
        checkpoint.load_weights(self.module, state["model"], state["path"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best, self.best_name = state["step"], state["best"], state["best_name"]
        if self.best_name is not None and self.best_name != self.criterion["metric"]:
            # Written under another criterion (or by a version that switched between two): not comparable.
            self.best, self.best_name = None, None
        self.epoch_losses = list(state["epoch_losses"])
        if self.probe is not None and "online_probe" in state:
            self.probe.load_state_dict(state["online_probe"])
        self.train_seconds = state["train_seconds"]
        if state["world_size"] == self.world:
            states = state["rng"][self.rank]
            torch.set_rng_state(states[0])
            if self.device.type == "cuda" and len(states) > 1:
                torch.cuda.set_rng_state(states[1], self.device)
        else:
            torch.manual_seed(self.seed + 1000 * self.rank + self.step)
            if self.main:
                print(f"note: checkpoint written by {state['world_size']} processes, resumed on {self.world}: "
                      "augmentation streams restart from the seed")
        if self.main and not self.quiet:
            print(f"resumed {state['path']} at step {self.step} (epoch {state['epoch']})")

    def seed_streams(self) -> None:
        """Per-rank augmentation streams for a fresh run (initial weights were seeded alike)."""
        torch.manual_seed(self.seed + 1000 * self.rank)

    # ------------------------------------------------------------ the loop

    def fit(self, resumed: bool = False) -> dict[str, Any]:
        total = self.schedule.total_steps
        epochs = -(-total // self.steps_per_epoch)
        images_per_step = self.loader.batch_size * self.world
        self.log = MetricsLog(self.run_dir, enabled=self.main, resume_step=self.step if resumed else None)
        self.module.train()
        step_times: list[float] = []
        with self.stop, closing(self.log):
            while self.step < total:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.loader.set_epoch(epoch)
                bar = tqdm(total=min(self.steps_per_epoch, total - epoch * self.steps_per_epoch), initial=start,
                           desc=f"epoch {epoch + 1}/{epochs}", disable=self.quiet or not self.main,
                           dynamic_ncols=True, unit="step")
                with closing(self.loader.iterate(start)) as batches:  # a stop mid-epoch ends a stream's workers too
                    tick = time.perf_counter()
                    while (batch := self._next_batch(batches)) is not None:
                        row = self.train_step(*batch)
                        # The step's time includes the wait for its batch: a loader that cannot keep up shows.
                        step_times.append(time.perf_counter() - tick)
                        self.train_seconds += step_times[-1]
                        self.epoch_losses.append(row["loss"])
                        throughput = images_per_step / (sum(step_times[-20:]) / len(step_times[-20:]))
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}", img_s=f"{throughput:.0f}",
                                        eta=format_seconds((total - self.step) * images_per_step / throughput),
                                        refresh=False)
                        bar.update()
                        if self.step % self.log_every == 0 or self.step == total:
                            self.stop_if_diverged()
                            self.log.log("step", {"step": self.step, "epoch": epoch, **row,
                                                  "img_per_s": round(throughput, 1)})
                        if self.stopping and self.main and self.step < total:
                            self.stop.announce()
                        if self.stopping or self.step >= total:
                            break
                        if (self.checkpoint_every_steps and self.step % self.checkpoint_every_steps == 0) \
                                or (self.save_due and self.step % self.steps_per_epoch):  # an epoch end saves anyway
                            self.save()
                        tick = time.perf_counter()
                bar.close()
                self._end_epoch(epoch)  # at an epoch's end (a stop there too): its row, monitor and checkpoint
                if self.stopping and self.step < total:  # asked during the last step: the run is done anyway
                    if self.step % self.steps_per_epoch:  # mid-epoch: no epoch end saved it
                        self.save()
                    raise Preempted(self.stop.requested or signal.SIGTERM, self.step)
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "best": self.best,
                   "best_metric": self.criterion["metric"],
                   "train_seconds": round(self.train_seconds, 2), "train_minutes": round(self.train_seconds / 60, 2),
                   "img_per_s": round(images_per_step * self.step / max(self.train_seconds, 1e-9), 1)}
        if self.main:
            write_json(self.run_dir / "summary.json", summary)
        return summary

    def _next_batch(self, batches: Any) -> tuple[Images, torch.Tensor, torch.Tensor] | None:
        """The loader's next batch (None at the epoch's end); unreadable data stops the run after
        saving the steps already taken in ``last.pt``."""
        try:
            return next(batches)
        except StopIteration:
            return None
        except BadData as err:
            if not self.step:
                raise
            if self.world > 1:  # the other processes wait in this step's collectives: no collective save
                raise BadData(f"{err}. --resume continues from the last checkpoint (train.checkpoint_every_minutes)"
                              ) from None
            if self.step % self.steps_per_epoch:  # an epoch end saved the rest
                self.save()
            raise BadData(f"{err}. The steps trained so far are in {self.run_dir / 'checkpoints' / 'last.pt'} "
                          f"(step {self.step}); --resume continues from there") from None

    def _end_epoch(self, epoch: int) -> None:
        last = self.step >= self.schedule.total_steps
        if not (self.step % self.steps_per_epoch == 0 or last) or not self.epoch_losses:
            return
        losses, self.epoch_losses = self.epoch_losses, []
        dist.average_norm_statistics(self.module)  # every rank evaluates and saves the same model
        row: dict[str, Any] = {"step": self.step, "epoch": epoch + 1, "loss": sum(losses) / len(losses),
                               "minutes": round(self.train_seconds / 60, 3)}
        if self.monitor is not None and ((epoch + 1) % self.monitor_every == 0 or last):
            row.update({k: round(v, 2) for k, v in self.monitor().items()})
            self.module.train()
        if self.probe is not None:
            row.update(self.probe.evaluate())
        metric = self.criterion["metric"]
        is_best = False
        if metric in row:  # an epoch the monitor skipped is not a candidate
            value = row[metric]
            is_best = self.best is None or (value > self.best if self.best_by else value < self.best)
            if is_best:
                self.best, self.best_name = value, metric
        self.log.log("epoch", row)
        if self.main and not self.quiet:
            extra = "".join(f", {k} {v}" for k, v in row.items() if k not in ("step", "epoch", "loss", "minutes"))
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}{extra}")
        self.save(best=is_best)
