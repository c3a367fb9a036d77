"""Opening a run directory: what every recipe that trains does before its first step and records
beside its checkpoints (STYLE rule 9: a run says how it was made).

:func:`open_run` picks the device, joins the process group when torchrun started one, resolves
the precision and prepares the directory (resuming: finds the checkpoint to resume from, on
rank 0, and tells every rank). :meth:`Run.record` writes ``config.yaml`` (the resolved config,
when the run has one), ``settings.yaml`` (the recipe's own settings: a fine-tune's
``ClassifierTraining``, a continual run's strategy) and ``meta.json`` (when, where, with which
command, git revision and library versions, plus the recipe's facts). :func:`check_settings`
is the resume rule: a run resumes only with the settings it was started with.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import RunConfig, to_yaml
from ..engine import Precision, checkpoint, dist
from ..engine.runtime import pick_device, provenance, resolve_precision, speed_settings
from ..errors import SelfsupError, closest
from ..files import write_json, write_text_atomic


@dataclass
class Run:
    """An opened run directory: where it is, what it runs on, and the checkpoint it resumes from (None:
    a fresh start)."""

    dir: Path
    device: torch.device
    precision: Precision
    resume_from: Path | None
    command: list[str] | None = None
    speed: dict[str, bool | str] = dataclasses.field(default_factory=dict)
    """What :func:`~selfsup.engine.runtime.speed_settings` switched on for this device."""

    @property
    def main(self) -> bool:
        return dist.is_main()

    def record(self, facts: dict[str, Any], *, config: RunConfig | dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> None:
        """``config.yaml`` (a :class:`~selfsup.config.RunConfig` or its dict), ``settings.yaml`` and
        ``meta.json`` (provenance, the settings, and ``facts``); rank 0 only."""
        if not self.main:
            return
        if config is not None:
            write_text_atomic(self.dir / "config.yaml", to_yaml(config) if isinstance(config, RunConfig) else
                              yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
        if settings is not None:
            write_text_atomic(self.dir / "settings.yaml", yaml.safe_dump(settings, sort_keys=False))
        extra = {"settings": settings} if settings is not None else {}
        write_json(self.dir / "meta.json", {**provenance(self.device, self.precision, self.command),
                                            "speed_settings": self.speed, **extra, **facts})


def open_run(run_dir: str | Path, *, device: str = "auto", precision: str = "auto", resume: bool = False,
             command: list[str] | None = None) -> Run:
    """The device, the process group, the precision and the run directory of a training run.

    ``resume``: continue from the directory's last checkpoint (none yet: start); without it, a
    directory that already holds checkpoints is refused rather than overwritten."""
    chosen = pick_device(device)
    dist.init_from_env(chosen.type)
    resume_from = checkpoint.prepare_run_dir(Path(run_dir), resume) if dist.is_main() else None
    resume_from = dist.broadcast_object(resume_from)
    return Run(Path(run_dir), chosen, resolve_precision(precision, chosen), resume_from, command,
               speed_settings(chosen))


RESUMABLE_CHANGES = ("device", "precision", "log_every", "test_every", "minutes", "workers", "cache_dir",
                     "checkpoint_every_steps", "checkpoint_every_minutes", "compile", "eval.train_images",
                     "eval.knn_grid_k", "eval.knn_grid_temperatures", "eval.linear_solver", "eval.linear_max_iter",
                     "eval.linear_epochs", "eval.linear_weight_decays", "eval.batch_size", "eval.fewshot_ways",
                     "eval.fewshot_shots", "eval.fewshot_queries", "eval.fewshot_episodes", "eval.fewshot_classes")
"""Settings a run may resume (or be read back) with changed: where it runs, how often it reports and
saves, how its data is read, a time budget (a resumed run keeps the length its budget gave it), and
the final evaluation's protocols, which training never reads. A name without a dot counts in
whatever section it stands."""

MISSING = object()


def resumable(name: str) -> bool:
    return name in RESUMABLE_CHANGES or name.rsplit(".", 1)[-1] in RESUMABLE_CHANGES


def check_settings(state: dict[str, Any], key: str, now: dict[str, Any], allow: Iterable[str] = (),
                   schema: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Refuse to resume a checkpoint whose ``state[key]`` settings differ from ``now``, naming each
    difference, unless it is :func:`resumable` or its dotted key is in ``allow`` (``--allow-change``);
    return every change, each with the step it takes effect at. ``schema`` (these settings' defaults)
    says what a setting is: a mapping-valued one (``optim.lr_scales``) compares whole, and one that
    only one side has (added to or removed from selfsup since) is no difference. A checkpoint written
    before its recipe recorded settings is taken as it is."""
    if not isinstance(state.get(key), dict):
        return []
    saved, wanted = plain(state[key]), plain(now)
    known = _flat(plain(schema)) if schema is not None else _flat(wanted)
    allow = list(allow)
    unknown = [name for name in allow if name not in known]
    if unknown:
        raise SelfsupError(f"--allow-change {unknown[0]}: no such setting{closest(unknown[0], list(known))}")
    names = {_setting(name, known) for name in {*_flat(saved), *_flat(wanted)}} - {None}
    changes = []
    for name in sorted(names):
        then, now_value = _at(saved, name), _at(wanted, name)
        if then is not MISSING and now_value is not MISSING and then != now_value:
            changes.append({"key": name, "from": then, "to": now_value, "step": state.get("step")})
    refused = [change for change in changes if change["key"] not in allow and not resumable(change["key"])]
    if refused:
        listed = "; ".join(f"{c['key']}: then {c['from']!r}, now {c['to']!r}" for c in refused)
        raise SelfsupError(f"cannot resume {state['path']}: it was trained with other settings ({listed}). Resume "
                           f"with the run's own settings, or accept the change with --allow-change "
                           f"{' '.join(c['key'] for c in refused)}; nothing was changed.")
    return changes


def _setting(name: str, known: dict[str, Any]) -> str | None:
    """The setting a flattened name belongs to: itself, or the mapping-valued setting holding it."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def _at(settings: Any, name: str) -> Any:
    for part in name.split("."):
        if not isinstance(settings, dict) or part not in settings:
            return MISSING
        settings = settings[part]
    return settings


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"key: then A, now B"`` for each setting (nested sections as dotted keys, ``optim.lr``) that
    differs, :data:`RESUMABLE_CHANGES` aside."""
    saved, now = _flat(plain(saved)), _flat(plain(now))
    return [f"{name}: then {saved.get(name)!r}, now {now.get(name)!r}" for name in sorted(set(saved) | set(now))
            if not resumable(name) and saved.get(name) != now.get(name)]


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def plain(value: Any) -> Any:
    """Settings as JSON would store them (tuples as lists, paths as strings, dataclasses as dicts),
    so that what a run recorded compares equal to what it is given again."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)
