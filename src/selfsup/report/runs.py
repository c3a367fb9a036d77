"""What a run directory holds, read from its files alone (``selfsup runs``, the comparison page).

A run directory is any folder with a ``metrics.jsonl`` or a ``checkpoints/`` folder of ``.pt``
files: pretraining, fine-tuning, distillation, and the runs inside sweeps. Its status:

- finished: ``summary.json`` was written (the engine writes it after the last step);
- resumable: no summary, but ``checkpoints/last.pt`` is a whole checkpoint file (``--resume``);
- interrupted: no summary and no usable checkpoint (killed before the first one, or the file is
  damaged): it has to start again.
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

#: Folders of a run directory that never hold runs themselves.
RUN_PARTS = {"checkpoints", "tensorboard", "eval", "report", "features", "embeddings", "layers", "tokens"}
STATUSES = ("finished", "resumable", "interrupted")


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
    return {key: state.get(key) for key in ("config", "data", "encoder", "classifier", "step", "epoch", "total_steps")}


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
        done = "-" if self.epochs_done is None else f"{self.epochs_done:.3g}"
        return done if self.epochs_planned is None else f"{done}/{self.epochs_planned:.3g}"

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
    root = Path(root)
    if not root.is_dir():
        raise SelfsupError(f"{root} is not a folder; give the folder that holds run directories (default: runs)")
    found = []

    def visit(folder: Path) -> None:
        if is_run_dir(folder):
            found.append(folder)
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name not in RUN_PARTS and not child.name.startswith("."):
                visit(child)

    visit(root)
    return found


def _best_result(results: dict[str, Any], protocol: str) -> float | None:
    """The protocol's top-1 of the latest-step entry (an entry per checkpoint evaluated)."""
    values = [entry[protocol]["top1"] for entry in results.values()
              if isinstance(entry, dict) and isinstance(entry.get(protocol), dict) and "top1" in entry[protocol]]
    return max(values) if values else None


def _backbone_name(backbone: dict[str, Any]) -> str:
    if not backbone:
        return "-"
    name = str(backbone.get("name", "-"))
    if name.startswith("resnet") and backbone.get("width") not in (None, 64):
        name += f" w{backbone['width']}"
    return name


def _epochs(config: dict[str, Any], meta: dict[str, Any], summary: dict[str, Any], facts: dict[str, Any],
            steps: int | None, is_classifier: bool) -> tuple[float | None, float | None]:
    """Epochs done and planned, from the step counts (a time budget plans a fraction of an epoch)."""
    total = meta.get("total_steps") or facts.get("total_steps")
    budget = summary.get("budget") or meta.get("budget") or {}
    if budget:
        planned = budget.get("epochs")
    elif is_classifier:  # its epochs are not in the (pretraining) config it carries
        epoch, step = facts.get("epoch"), facts.get("step")
        planned = round(total * epoch / step, 2) if total and epoch and step else None
    else:
        planned = (config.get("train") or {}).get("epochs")
    if not (total and planned and steps is not None):
        return None, planned
    return round(planned * min(steps, total) / total, 2), planned


def read_run(path: str | Path, root: Path | None = None) -> RunRecord:
    """Everything ``selfsup runs`` and ``selfsup report`` show about one run directory."""
    path = Path(path)
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
    last = path / "checkpoints" / "last.pt"
    usable = last.is_file() and whole_checkpoint(last)
    facts = checkpoint_facts(last) if usable else {}
    config = config or (facts.get("config") or {})
    is_classifier = bool(facts.get("classifier")) or "test_top1" in summary or meta.get("classifier") is True
    status = "finished" if summary else "resumable" if usable else "interrupted"
    epoch_rows, step_rows = read_rows(path, "epoch"), read_rows(path, "step")
    monitored = [r["knn_top1"] for r in epoch_rows if "knn_top1" in r]
    knn = _best_result(results, "knn")
    if knn is None and monitored:
        knn = max(monitored)
    test_rows = [r["test_top1"] for r in epoch_rows if "test_top1" in r]
    test_top1 = summary.get("test_top1", test_rows[-1] if test_rows else None)
    steps = summary.get("steps", step_rows[-1]["step"] if step_rows else facts.get("step"))
    done, planned = _epochs(config, meta, summary, facts, steps, is_classifier)
    if done is None and epoch_rows:
        done = epoch_rows[-1]["epoch"]
    method = (config.get("method") or {}).get("name", "-")
    if is_classifier:
        origin = (facts.get("encoder") or {}).get("method")
        method = f"classifier ({origin})" if origin else "classifier"
    data = (config.get("data") or {}).get("name") or (facts.get("data") or {}).get("dataset") or "-"
    rates = [r["img_per_s"] for r in step_rows if "img_per_s" in r]
    img_per_s = summary.get("img_per_s", sum(rates) / len(rates) if rates else None)
    minutes = summary.get("train_minutes", epoch_rows[-1].get("minutes") if epoch_rows else None)
    name = str(path.relative_to(root)) if root is not None and path != root and root in path.parents else path.name
    return RunRecord(path=path, name=name or path.name, status=status, kind="classifier" if is_classifier else "pretrain",
                     method=method, data=data, backbone=_backbone_name(config.get("backbone") or {}), steps=steps,
                     epochs_done=done, epochs_planned=planned, knn=knn, linear=_best_result(results, "linear"),
                     test_top1=test_top1, img_per_s=img_per_s, minutes=minutes, config=config, meta=meta,
                     summary=summary, results=results)


def runs_table(records: list[RunRecord]) -> str:
    """A markdown table of ``records`` (one row each)."""
    from ..eval import markdown_table

    columns = ["run", "method", "data", "backbone", "epochs", "kNN", "linear", "test top-1", "img/s", "status"]
    return markdown_table([r.row() for r in records], columns)
