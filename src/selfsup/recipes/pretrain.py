"""Pretraining: a method of the registry fitted by the engine on a dataset of a config.

The recipe builds what the engine fits (data, method, optimiser, schedule), chooses what is
fastest on the machine at hand (precision, memory layout), sizes the run to a time budget when
asked, watches it with a kNN monitor on held-out training images, and writes the run directory.
"""
from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from time import perf_counter as clock
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import RunConfig, resolve
from ..data import BatchLoader, DataFacts, ImageDataset, Splits, StreamLoader, default_workers, labeled_part, load_splits
from ..engine import Engine, Freeze, Images, Precision, Schedule, build_optimizer, checkpoint, dist
from ..engine.lock import unlock_run_dir
from ..errors import SelfsupError
from ..eval import extract_features, knn_accuracy
from ..eval.probe import OnlineProbe
from ..methods import Method
from ..report import write_report
from ..files import read_json_record, write_json
from ..views import EvalView
from .layout import choose_channels_last
from .loading import build_model
from .meta import EncoderRef, RunMeta
from .run import check_settings, open_run


class KnnMonitor:
    """Weighted kNN top-1 of the backbone during training: a bank of labelled training images and
    queries that the run never trains on (held-out training images, or the test split when
    ``train.monitor_split=test``). Computed on rank 0 and shared."""

    def __init__(self, method: Method, bank: ImageDataset, queries: ImageDataset, split: str, data: DataFacts,
                 config: RunConfig, precision: Precision, channels_last: bool) -> None:
        self.method, self.bank, self.queries, self.split = method, bank, queries, split
        self.view = EvalView.of(data)
        self.classes = len(data.classes)
        self.eval, self.precision, self.channels_last = config.eval, precision, channels_last

    def describe(self) -> dict[str, Any]:
        return {"metric": "knn_top1", "queries": self.split, "query_images": len(self.queries),
                "bank_images": len(self.bank)}

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        accuracy = None
        if dist.is_main():
            options = dict(view=self.view, autocast_dtype=self.precision.dtype, channels_last=self.channels_last,
                           batch_size=self.eval.batch_size)
            network = self.method.network(self.eval.network)  # the network evaluation will read
            bank = extract_features(network, self.bank.images, **options)
            queries = extract_features(network, self.queries.images, **options)
            accuracy = knn_accuracy(bank, self.bank.targets, queries, self.queries.targets, self.classes,
                                    self.eval.knn_k, self.eval.knn_temperature)
        return {"knn_top1": dist.broadcast_object(accuracy)}


def monitor_sets(splits: Splits, config: RunConfig) -> tuple[ImageDataset, ImageDataset, str] | None:
    """The kNN monitor's bank, the queries of both monitors and where they come from (None: no
    monitor runs, or the data has no labels for one)."""
    cfg = config.train
    if not monitors_run(config) or not splits.train.labeled:
        return None
    if cfg.monitor_split == "test":
        if splits.test is None or not splits.test.labeled:
            return None
        queries = splits.test.balanced_subset(cfg.knn_test_size, cfg.seed)
        split = "test (best.pt is chosen on test data)"
    elif splits.held_out is not None:
        queries, split = splits.held_out, f"held-out training images (seed {cfg.seed}), never trained on"
    else:
        return None
    return labeled_part(splits.train).balanced_subset(cfg.knn_bank_size, cfg.seed).in_ram(), queries, split


def monitors_run(config: RunConfig) -> bool:
    """Whether the kNN monitor or the online probe is asked for (they need labelled queries)."""
    return config.train.knn_every > 0 or config.train.online_probe


def compile_backbones(method: nn.Module) -> list[str]:
    """``torch.compile`` every backbone of ``method`` in place (``nn.Module.compile``: parameter names,
    and so checkpoints, stay as they are); returns their names."""
    names = [name for name, module in method.named_modules() if name.rsplit(".", 1)[-1] == "backbone"]
    for name in names:
        method.get_submodule(name).compile()
    return names


class Pretraining:
    """Everything a pretraining run is made of; ``fit()`` runs it."""

    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
                 command: list[str] | None = None, allow_change: tuple[str, ...] = ()) -> None:
        self.config, self.run_dir, self.quiet = config, Path(run_dir), quiet
        self.started = clock()  # a time budget counts the set-up too
        cfg = config.train
        self.run = open_run(self.run_dir, device=cfg.device, precision=cfg.precision, resume=resume, command=command)
        self.device, self.precision, self.resume_from = self.run.device, self.run.precision, self.run.resume_from
        self.main, world = dist.is_main(), dist.world_size()
        if cfg.batch_size % world:
            raise SelfsupError(f"train.batch_size={cfg.batch_size} cannot be split evenly over "
                               f"{world} processes; use a multiple of {world}")
        resumed = checkpoint.load(self.resume_from) if self.resume_from is not None else None

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        hold_out = cfg.knn_test_size if monitors_run(config) and cfg.monitor_split == "holdout" else 0
        # The probe is on by default: on a labelled set too small to spare its queries it steps aside
        # (the kNN monitor, asked for explicitly, refuses instead).
        self.splits = load_splits(config.data, seed=cfg.seed, hold_out=hold_out, hold_out_optional=cfg.knn_every <= 0,
                                  stream=True,
                                  quiet=quiet or not self.main)
        if hold_out and self.splits.held_out is None and self.splits.train.labeled and self.main and not quiet:
            print(f"note: the online probe is off: {len(self.splits.train)} training images are too few to hold out "
                  f"train.knn_test_size={hold_out} queries (lower it, or train.monitor_split=test)")
        self.data_info = self.splits.info()
        self.method = build_model(config, self.data_info).to(self.device)
        if world > 1 and cfg.sync_bn:
            if self.device.type != "cuda":
                raise SelfsupError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                                   "on CPU leave it off: each process normalises over its own batch")
            self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.compiled = compile_backbones(self.method) if cfg.compile else []
        if self.main:
            checkpoint.check_disk_space(self.run_dir, self.method)
        sets = monitor_sets(self.splits, config)
        self.skipped_files: set[str] = set()
        self.loader = self._loader(probe=sets is not None and cfg.online_probe)
        if len(self.loader) == 0:
            raise SelfsupError(f"train.batch_size={cfg.batch_size} is larger than the training set "
                               f"({len(self.splits.train)} images{f' over {world} processes' if world > 1 else ''}); "
                               "lower the batch size")
        kept = None if resumed is None or resumed.get("channels_last") is None else bool(resumed["channels_last"])
        # Decided once per run (a resumed run computes alike), except where the layout would be wrong here.
        self.channels_last = choose_channels_last(config, self.method, self._first_batch, self.device, self.precision,
                                                  quiet or not self.main, kept=kept)
        self.method.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.steps_per_epoch = len(self.loader)
        total = cfg.epochs * self.steps_per_epoch if cfg.max_steps is None else \
            min(cfg.epochs * self.steps_per_epoch, cfg.max_steps)
        optimizer = build_optimizer(self.method.param_groups(), config.optim, self._schedule(total).peak_lr)
        self.monitor = KnnMonitor(self.method, *sets, self.data_info, config, self.precision, self.channels_last) \
            if sets is not None and cfg.knn_every > 0 else None
        self.probe = self._online_probe(sets[1]) if sets is not None and cfg.online_probe else None
        monitor = self.monitor.describe() if self.monitor is not None else (
            {"metric": "probe_top1", "queries": sets[2], "query_images": len(sets[1])} if self.probe else None)
        meta = {**RunMeta.record(config.to_dict(), self.data_info,
                                 EncoderRef(self.method.network_prefix(config.eval.network), config.method_name)),
                "channels_last": self.channels_last, "monitor": monitor,
                "online_probe": {"fraction": cfg.probe_fraction} if self.probe is not None else None}
        self.engine = Engine(
            self.method, self.loader, optimizer, self._schedule(total), run_dir=self.run_dir, device=self.device,
            precision=self.precision, channels_last=self.channels_last, clip_grad=config.optim.clip_grad,
            clip_per_parameter=config.optim.clip_mode == "per_parameter",
            freeze=tuple(Freeze(prefix, round(epochs * self.steps_per_epoch))
                         for prefix, epochs in {**self.method.frozen_epochs(), **config.optim.freeze}.items()),
            monitor=self.monitor, monitor_every=max(cfg.knn_every, 1), probe=self.probe,
            best_by=self._best_by(), meta=meta, seed=cfg.seed,
            log_every=cfg.log_every, checkpoint_every_steps=cfg.checkpoint_every_steps,
            checkpoint_every_minutes=cfg.checkpoint_every_minutes, quiet=quiet)
        self.budget: dict[str, Any] | None = None
        changes = []  # the settings changed on --resume, accepted with allow_change, with their steps
        if resumed is not None:
            state = resumed
            changes = self._check_resumable(state, allow_change)
            self.engine.restore(state)  # also restores each rank's augmentation stream
            if state.get("budget"):  # a run sized to a time budget keeps the length it was given
                self.budget = self.engine.meta["budget"] = state["budget"]
                self.engine.schedule = self._schedule(state["total_steps"])
        else:
            if resume and self.main and not quiet:
                print(f"--resume: {self.run_dir} holds no checkpoint yet; starting the run")
            self.engine.seed_streams()
            if cfg.minutes is not None:
                self._fit_budget(cfg.minutes)
        self.run.record({"data": self.data_info.to_dict(), "channels_last": self.channels_last,
                         "resumed_at_step": self.engine.step, "total_steps": self.engine.schedule.total_steps, "steps_per_epoch": self.steps_per_epoch,
                         "monitor": meta["monitor"], "online_probe": meta["online_probe"], "compiled": self.compiled,
                         "best_by": self.engine.criterion, "budget": self.budget,
                         "config_changes": self._earlier_changes() + changes}, config=config)

    def _online_probe(self, queries: ImageDataset) -> OnlineProbe:
        network, data = self.method.network(self.config.eval.network), self.data_info
        return OnlineProbe(network, network.num_features, len(data.classes), EvalView.of(data), queries,
                           fraction=self.config.train.probe_fraction, device=self.device,
                           autocast_dtype=self.precision.dtype, channels_last=self.channels_last,
                           batch_size=self.config.eval.batch_size)

    def _best_by(self) -> str | None:
        """The metric that chooses best.pt (None: the loss), from ``train.best_by``."""
        wanted, knn, probe = self.config.train.best_by, self.monitor is not None, self.probe is not None
        if wanted == "auto":
            return "knn_top1" if knn else "probe_top1" if probe else None
        if (wanted == "knn_top1" and not knn) or (wanted == "probe_top1" and not probe):
            why = "train.knn_every is 0" if wanted == "knn_top1" and self.config.train.knn_every <= 0 else \
                "train.online_probe is off" if wanted == "probe_top1" and not self.config.train.online_probe else \
                "the training data has no labels (or no held-out queries)"
            raise SelfsupError(f"train.best_by={wanted} needs that monitor, but {why}; use train.best_by=auto or loss")
        return None if wanted == "loss" else wanted

    def _schedule(self, total_steps: int) -> Schedule:
        return Schedule.from_config(self.config.optim, total_steps, self.steps_per_epoch, self.config.train.batch_size)

    def _loader(self, probe: bool) -> BatchLoader | StreamLoader:
        """Batches of the training set: from its tensor (in memory, on the device when it fits, or
        memory-mapped), or streamed from its files by worker processes that take the views' crops
        (and make the whole image at the training size only when the online ``probe`` reads it)."""
        cfg, data, world = self.config.train, self.config.data, dist.world_size()
        train = self.splits.train
        if not train.in_memory:
            crops = self.method.views.crops() if hasattr(self.method.views, "crops") else []
            workers = data.workers if data.workers is not None else default_workers(dist.local_world_size())
            if self.main and not self.quiet:
                print(f"data: streaming {len(train)} images with {workers} worker processes"
                      + (f", {len(crops)} crops per image taken from the full-resolution image" if crops else
                         f", each at {train.image_size} px"))
            return StreamLoader(train, cfg.batch_size // world, self.device, crops, workers=workers, seed=cfg.seed,
                                rank=dist.rank(), world_size=world, base=probe, on_skip=self._skipped)
        on_device = data.on_device == "always" or (data.on_device == "auto" and self._fits_on_device())
        return BatchLoader(train, cfg.batch_size // world, device=self.device, on_device=on_device,
                           seed=cfg.seed, rank=dist.rank(), world_size=world)

    def _first_batch(self) -> Images:
        with closing(self.loader.iterate()) as batches:
            return next(batches)[0]

    def _skipped(self, files: list[str]) -> None:
        """Files a stream skipped (``data.skip_bad``): said once each and listed in ``skipped.txt``."""
        new = [name for name in dict.fromkeys(files) if name not in self.skipped_files]
        self.skipped_files.update(new)
        with open(self.run_dir / f"skipped{'' if self.main else f'-rank{dist.rank()}'}.txt", "a") as listing:
            listing.writelines(f"{name}\n" for name in new)
        if not self.quiet:
            for name in new:
                tqdm.write(f"note: skipped {name}: it does not decode (data.skip_bad)")

    def _fits_on_device(self) -> bool:
        if self.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.splits.train.nbytes < 0.25 * free

    def _check_resumable(self, state: dict[str, Any], allow_change: tuple[str, ...]) -> list[dict[str, Any]]:
        checkpoint.check_compatible(state, self.config.to_dict())  # another architecture: never resumable
        changes = check_settings(state, "config", self.config.to_dict(), allow_change,
                                 schema=resolve({"method": {"name": self.config.method_name}}).to_dict())
        saved, now = DataFacts.of(state["data"]), self.data_info
        if (saved.channels, saved.image_size) != (now.channels, now.image_size):
            raise SelfsupError(f"checkpoint {state['path']} was trained on {saved.channels}-channel "
                               f"{saved.image_size} px images, this data is {now.channels}-channel "
                               f"{now.image_size} px")
        return changes

    def _earlier_changes(self) -> list[dict[str, Any]]:
        """The config changes earlier resumptions of this run accepted (kept in meta.json), but those
        made at or after the step resumed from: that resumption is being redone."""
        if not self.main or self.resume_from is None:
            return []
        changes = read_json_record(self.run_dir / "meta.json").get("config_changes")
        return [change for change in changes if isinstance(change, dict) and (change.get("step") or 0) <
                self.engine.step] if isinstance(changes, list) else []

    def _fit_budget(self, minutes: float) -> None:
        """Time the first steps and size the run so that it ends about ``minutes`` after it started
        (set-up, data loading and these timings included)."""
        if minutes <= 0:
            raise SelfsupError(f"train.minutes must be positive, got {minutes}")
        seconds_per_step = self.engine.time_steps(count=3)
        elapsed = clock() - self.started
        steps = budget_steps(minutes, elapsed, seconds_per_step, self.config.train.max_steps)
        self.engine.schedule = self._schedule(steps)
        # Unrounded: whatever reads the record back (a test, a report) computes with what the run used.
        self.budget = self.engine.meta["budget"] = {
            "minutes": minutes, "setup_seconds": elapsed, "seconds_per_step": seconds_per_step, "steps": steps,
            "epochs": steps / self.steps_per_epoch, "images": steps * self.config.train.batch_size}
        if self.main and not self.quiet:
            print(f"time budget {minutes:.1f} min: measured {seconds_per_step:.2f} s/step "
                  f"({self.config.train.batch_size / seconds_per_step:.0f} img/s) -> {steps} steps of "
                  f"{self.config.train.batch_size} images ({steps / self.steps_per_epoch:.2f} epochs)")

    def fit(self) -> dict[str, Any]:
        summary = self.engine.fit(resumed=self.resume_from is not None)
        if self.main:
            if self.budget is not None:
                summary["budget"] = self.budget
                write_json(self.run_dir / "summary.json", summary)
            write_report(self.run_dir)
        return summary


BUDGET_RESERVE = 0.97
"""Share of a time budget's training time given to steps; the monitor and checkpoints, once an
epoch, take the rest."""


def budget_steps(minutes: float, elapsed_seconds: float, seconds_per_step: float, max_steps: int | None = None) -> int:
    """Steps that fit in what is left of ``minutes`` after ``elapsed_seconds`` of set-up, at
    ``seconds_per_step`` (at least one; at most ``max_steps``)."""
    left = minutes * 60 - elapsed_seconds
    steps = max(1, int(BUDGET_RESERVE * left / seconds_per_step)) if seconds_per_step > 0 else 1
    return min(steps, max_steps) if max_steps is not None else steps


def pretrain(config: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
             command: list[str] | None = None, allow_change: tuple[str, ...] = ()) -> dict[str, Any]:
    """Pretrain ``config`` into ``run_dir`` (locked against other writers while it runs); returns a
    summary (also written to summary.json). On ``resume``, settings that differ from the run's are
    refused unless named in ``allow_change``."""
    try:
        run = Pretraining(config, run_dir, resume=resume, quiet=quiet, command=command, allow_change=allow_change)
        summary = run.fit()
    finally:
        unlock_run_dir(run_dir)
    if run.main and not quiet:
        print(json.dumps(summary, indent=2))
    return summary

