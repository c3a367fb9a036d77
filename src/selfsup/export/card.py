"""The JSON card written next to exported weights: what the model is, what it expects, where it
comes from and how well it did, so that the weights file can be used and trusted alone."""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from ..data import DataFacts
from ..engine.checkpoint import run_dir_of
from ..engine.runtime import library_versions
from ..errors import SelfsupError
from ..recipes.meta import RunMeta


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SelfsupError(f"{path} is not readable JSON ({err}); repair or delete it (the export copies it into "
                           "the card) and run selfsup export again") from None


def preprocessing(data: DataFacts, vit: bool) -> dict[str, Any]:
    """The input the encoder was trained on, from a checkpoint's data facts."""
    size = data.image_size
    resize = (f"resize each image to {size}x{size} (bilinear, antialiased), as selfsup's evaluation does"
              + ("; a ViT takes exactly this size (its position embedding is for this patch grid)" if vit else
                 "; a ResNet accepts other sizes, but its features are those it learnt only at this one"))
    return {"channels": data.channels, "image_size": size, "mean": list(data.mean), "std": list(data.std),
            "pixels": "pixels in [0, 1] (uint8 / 255), then (x - mean) / std per channel", "resize": resize,
            "input": f"float32 (B, {data.channels}, {size}, {size})"}


def provenance(meta: RunMeta) -> dict[str, Any]:
    """Where the weights come from: the checkpoint file (with its sha256), its step, and the run's
    ``meta.json`` (git revision, date, library versions) when it lies in a run directory."""
    path = meta.path.resolve()
    found: dict[str, Any] = {
        "checkpoint": str(path), "sha256": sha256(path), "step": meta.step, "epoch": meta.epoch,
        "method": meta.method, "dataset": meta.data.dataset, "training_images": meta.data.images or None,
        "classes": len(meta.data.classes) or None,
        # A method with a momentum teacher exports the network its paper evaluates (DINO: the teacher).
        "network": meta.encoder.network or "student"}
    if meta.imported:
        found["imported_from"] = meta.imported
    run = run_dir_of(path)
    if run is not None and (run / "meta.json").is_file():
        meta = read_json(run / "meta.json")
        found["run"] = {"dir": str(run), **{key: meta.get(key) for key in
                                           ("git_revision", "date", "versions", "command", "device", "precision")}}
    found["exported"] = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                         "versions": library_versions()}
    return found


def results(meta: RunMeta) -> dict[str, Any]:
    """The run's ``eval/results.json`` entries of these weights (their ``about`` fields name this
    checkpoint and step) and its ``summary.json``; empty for a checkpoint outside a run directory or
    a run never evaluated."""
    run = run_dir_of(meta.path.resolve())
    found: dict[str, Any] = {}
    if run is None:
        return found
    if (run / "eval" / "results.json").is_file():
        wanted = (meta.path.stem, meta.step)
        entries = read_json(run / "eval" / "results.json")
        found["eval"] = {name: entry for name, entry in entries.items() if isinstance(entry, dict)
                         and isinstance(entry.get("about"), dict)
                         and (entry["about"].get("stem"), entry["about"].get("step")) == wanted} \
            if isinstance(entries, dict) else {}
    if (run / "summary.json").is_file():
        found["summary"] = read_json(run / "summary.json")
    return found


def write_card(path: Path, card: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    except OSError as err:
        raise SelfsupError(f"could not write the card {path}: {err.strerror or err}; choose another --out") from None
