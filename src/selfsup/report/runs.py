"""What a run directory holds, read from its files alone (``selfsup runs``, the comparison page).

A run directory is any folder with a ``metrics.jsonl`` or a ``checkpoints/`` folder of ``.pt``
files: pretraining, fine-tuning, distillation, and the runs inside sweeps. Its status:

- finished: ``summary.json`` was written (the engine writes it after the last step);
- resumable: no summary, but ``checkpoints/last.pt`` is a whole checkpoint file (``--resume``);
- interrupted: no summary and no usable checkpoint (killed before the first one, or the file is
  damaged): it has to start again.

A ``selfsup import`` folder (weights without an optimiser, nothing to resume) counts as finished.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine.metrics import read_rows
from ..errors import SelfsupError
from ..eval.evaluator import ABOUT

#: Folders of a run directory that never hold runs themselves.
RUN_PARTS = {"checkpoints", "tensorboard", "eval", "report", "features", "embeddings", "layers", "tokens"}
STATUSES = ("finished", "resumable", "interrupted")
RUN_COLUMNS = ["run", "method", "data", "backbone", "epochs", "kNN", "linear", "test top-1", "img/s", "status"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def whole_checkpoint(path: Path) -> bool:
    """Cheaply: a complete ``torch.save`` archive (a zip with its central directory and a pickle),
    not a file cut short by a kill or a full disk. Its contents are checked when it is loaded."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """Config, data facts and step of a checkpoint without reading its tensors (memory-mapped)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint: the run's status says so
        return {}
    if not isinstance(state, dict):
        return {}
    facts = {key: state.get(key) for key in ("config", "data", "encoder", "classifier", "step", "epoch",
                                             "total_steps", "steps_per_epoch", "imported")}
    facts["trained"] = "optimizer" in state  # an imported checkpoint holds weights only: nothing to resume
    return facts


@dataclass
class RunRecord:
    """One run directory, summarised for tables and comparisons."""

    path: Path
    name: str
    status: str
    kind: str
    """pretrain, or the downstream recipe (classifier) that wrote it."""
    method: str
    data: str
    backbone: str
    steps: int | None
    epochs_done: float | None
    epochs_planned: float | None
    knn: float | None
    linear: float | None
    test_top1: float | None
    img_per_s: float | None
    minutes: float | None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    """``eval/results.json``: {encoder name: {protocol: {top1, ...}}}."""

    @property
    def epochs(self) -> str:
        def count(value: float) -> str:
            return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
        done = "-" if self.epochs_done is None else count(self.epochs_done)
        return done if self.epochs_planned is None else f"{done}/{count(self.epochs_planned)}"

    def row(self) -> dict[str, Any]:
        def number(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"
        return {"run": self.name, "kind": self.kind, "method": self.method, "data": self.data,
                "backbone": self.backbone, "epochs": self.epochs, "kNN": number(self.knn),
                "linear": number(self.linear), "test top-1": number(self.test_top1),
                "img/s": "-" if self.img_per_s is None else f"{self.img_per_s:.0f}", "status": self.status}


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or any((path / "checkpoints").glob("*.pt"))


def find_runs(root: str | Path) -> list[Path]:
    """Run directories at or under ``root`` (sorted by path; a run's own sub-folders skipped)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise SelfsupError(f"{root} is not a folder; give the folder that holds run directories (default: runs)")
    found, seen = [], set()

    def visit(folder: Path) -> None:
        real = folder.resolve()
        if real in seen:  # a symbolic link to a folder already listed (or a loop)
            return
        seen.add(real)
        if is_run_dir(folder):
            found.append(folder)
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name not in RUN_PARTS and not child.name.startswith("."):
                visit(child)

    visit(root)
    return found


def own_result(results: dict[str, Any], protocol: str) -> float | None:
    """The protocol's best top-1 among the entries of the run's latest evaluated step: the entries
    ``selfsup eval`` recorded for a checkpoint (their ``about`` fields say so); other encoders in
    the same file (the raw-pixel baseline of ``selfsup demo``) are not the run's."""
    entries = []
    for entry in results.values():
        about = entry.get(ABOUT) if isinstance(entry, dict) else None
        if isinstance(about, dict) and about.get("step") is not None and isinstance(entry.get(protocol), dict) \
                and "top1" in entry[protocol]:
            entries.append((int(about["step"]), entry[protocol]["top1"]))
    if not entries:
        return None
    latest = max(step for step, _ in entries)
    return max(top1 for step, top1 in entries if step == latest)


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    """A config section as a mapping whatever the file holds (``method: simclr`` -> {"name": "simclr"})."""
    value = config.get(key) if isinstance(config, dict) else None
    if isinstance(value, str):
        return {"name": value}
    return value if isinstance(value, dict) else {}


def _backbone_name(backbone: dict[str, Any]) -> str:
    if not backbone:
        return "-"
    name = str(backbone.get("name", "-"))
    if name.startswith("resnet") and backbone.get("width") not in (None, 64):
        name += f" w{backbone['width']}"
    return name


def _epochs(config: dict[str, Any], meta: dict[str, Any], facts: dict[str, Any],
            steps: int | None) -> tuple[float | None, float | None]:
    """Epochs done and planned, from the step counts: steps / steps per epoch (a time budget or
    ``train.max_steps`` plans other than ``train.epochs``). Runs written before the steps per epoch
    were recorded fall back to ``train.epochs``."""
    total = meta.get("total_steps") or facts.get("total_steps")
    per_epoch = meta.get("steps_per_epoch") or facts.get("steps_per_epoch")
    if total and per_epoch:
        return (None if steps is None else round(min(steps, total) / per_epoch, 2)), round(total / per_epoch, 2)
    budget = meta.get("budget") or {}
    train = _section(config, "train")
    if facts.get("classifier") or train.get("max_steps"):  # its epochs are not what the config says
        return None, budget.get("epochs")
    planned = budget.get("epochs") or train.get("epochs")
    if not (total and planned and steps is not None):
        return None, planned
    return round(planned * min(steps, total) / total, 2), planned


def read_run(path: str | Path, root: Path | None = None) -> RunRecord:
    """Everything ``selfsup runs`` and ``selfsup report`` show about one run directory."""
    path = Path(path).resolve()
    root = None if root is None else Path(root).resolve()
    if not path.is_dir():
        raise SelfsupError(f"run directory {path} does not exist")
    if not is_run_dir(path):
        raise SelfsupError(f"{path} is not a run directory (no metrics.jsonl, no checkpoints/*.pt); "
                           "give the folder that `selfsup pretrain --run-dir` (or finetune, distill, ...) wrote")
    summary = _read_json(path / "summary.json")
    meta = _read_json(path / "meta.json")
    results = _read_json(path / "eval" / "results.json")
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            config = {}
        config = config if isinstance(config, dict) else {}
    last = path / "checkpoints" / "last.pt"
    usable = last.is_file() and whole_checkpoint(last)
    facts = checkpoint_facts(last) if usable else {}
    config = config or (facts.get("config") if isinstance(facts.get("config"), dict) else {})
    is_classifier = bool(facts.get("classifier")) or "test_top1" in summary or meta.get("classifier") is True
    imported = bool(facts.get("imported"))
    status = "finished" if summary or imported else "resumable" if usable and facts.get("trained") else \
        "interrupted"
    epoch_rows, step_rows = read_rows(path, "epoch"), read_rows(path, "step")
    monitored = [r["knn_top1"] for r in epoch_rows if "knn_top1" in r]
    knn = own_result(results, "knn")
    if knn is None and monitored:
        knn = max(monitored)
    test_rows = [r["test_top1"] for r in epoch_rows if "test_top1" in r]
    test_top1 = summary.get("test_top1", test_rows[-1] if test_rows else None)
    # Where the run stands: the summary's count, else the checkpoint's step (where --resume restarts).
    steps = next((value for value in (summary.get("steps"), facts.get("step"),
                                      step_rows[-1]["step"] if step_rows else None) if value is not None), None)
    done, planned = _epochs(config, meta, facts, steps)
    if done is None and epoch_rows:
        done = epoch_rows[-1]["epoch"]
    method = _section(config, "method").get("name", "-")
    if imported:
        method = f"imported ({(facts.get('encoder') or {}).get('method', 'weights')})"
    elif is_classifier:
        origin = (facts.get("encoder") or {}).get("method")
        method = f"classifier ({origin})" if origin else "classifier"
    data = _section(config, "data").get("name") or (facts.get("data") or {}).get("dataset") or "-"
    rates = [r["img_per_s"] for r in step_rows if "img_per_s" in r]
    img_per_s = summary.get("img_per_s", sum(rates) / len(rates) if rates else None)
    minutes = summary.get("train_minutes", epoch_rows[-1].get("minutes") if epoch_rows else None)
    name = str(path.relative_to(root)) if root is not None and path != root and root in path.parents else path.name
    kind = "imported" if imported else "classifier" if is_classifier else "pretrain"
    return RunRecord(path=path, name=name or path.name, status=status, kind=kind,
                     method=method, data=data, backbone=_backbone_name(_section(config, "backbone")), steps=steps,
                     epochs_done=done, epochs_planned=planned, knn=knn, linear=own_result(results, "linear"),
                     test_top1=test_top1, img_per_s=img_per_s, minutes=minutes, config=config, meta=meta,
                     summary=summary, results=results)


def runs_table(records: list[RunRecord]) -> str:
    """A markdown table of ``records`` (one row each)."""
    from ..tables import markdown_table
    return markdown_table([r.row() for r in records], RUN_COLUMNS)
