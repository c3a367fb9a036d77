"""What a selfsup checkpoint says about its run, typed: the schema named once.

A checkpoint is a plain dict of tensors and literals (it loads with ``weights_only``). The engine
writes the training state (weights, optimiser, step, random streams); the recipe that ran adds
the facts below, through :meth:`RunMeta.record`, and every reader goes through :class:`RunMeta`
instead of indexing the dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..data import DataFacts
from ..engine import checkpoint


@dataclass(frozen=True)
class EncoderRef:
    """Where a checkpoint's encoder lies in its weights, and what to call it."""

    prefix: str = "backbone"
    """Its weights are the model's entries under this prefix (``backbone``, ``teacher.backbone``,
    ``encoder`` for a classifier's trunk)."""
    method: str | None = None
    """The name evaluations give it (``supervised``, ``torchvision resnet18``, ...); None: the config's method."""
    head_layers: int = 0
    """Hidden projection-head layers fine-tuned on top of the backbone (SimCLR v2's trunk)."""
    network: str | None = None
    """``student`` or ``teacher``: which network of a method with a momentum teacher it is."""

    @classmethod
    def of(cls, record: dict[str, Any]) -> EncoderRef:
        """From a checkpoint's ``encoder`` entry; keys this version does not know are left out, as
        :meth:`DataFacts.of <selfsup.data.DataFacts.of>` does."""
        return cls(**{key: value for key, value in record.items() if key in {f.name for f in fields(cls)}})

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class RunMeta:
    """A checkpoint as its readers need it: the run's config and data, its encoder, and what it is."""

    path: Path
    """The checkpoint file read."""
    config: dict[str, Any]
    """The run's config as saved (:func:`~selfsup.recipes.loading.load_checkpoint_config` resolves it)."""
    data: DataFacts
    encoder: EncoderRef
    weights: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    """The model's state dict."""
    step: int | None = None
    epoch: int | None = None
    classifier: dict[str, Any] | None = None
    """A classifier's facts (classes, labels used, stage, source): a fine-tuned, distilled, continual,
    semi-supervised or supervised network."""
    imported: dict[str, Any] | None = None
    """Weights imported from another library (``selfsup import``)."""

    @classmethod
    def read(cls, path: str | Path) -> RunMeta:
        """The checkpoint at ``path`` (a run directory stands for its ``checkpoints/last.pt``)."""
        return cls.of(checkpoint.load(path))

    @classmethod
    def of(cls, state: dict[str, Any]) -> RunMeta:
        """From a loaded checkpoint (:func:`selfsup.engine.checkpoint.load`)."""
        return cls(Path(state["path"]), state["config"], DataFacts.of(state["data"]),
                   EncoderRef.of(state.get("encoder") or {}), state.get("model", {}), state.get("step"),
                   state.get("epoch"), state.get("classifier"), state.get("imported"))

    @staticmethod
    def record(config: dict[str, Any], data: DataFacts, encoder: EncoderRef, *,
               classifier: dict[str, Any] | None = None, imported: dict[str, Any] | None = None) -> dict[str, Any]:
        """The entries a recipe adds to its checkpoints so that :meth:`of` reads them back."""
        record = {"config": config, "data": data.to_dict(), "encoder": encoder.to_dict()}
        return {**record, **({"classifier": classifier} if classifier is not None else {}),
                **({"imported": imported} if imported is not None else {})}

    @property
    def source(self) -> str:
        """The checkpoint's resolved path, as other runs record where they started from."""
        return str(self.path.resolve())

    @property
    def method(self) -> str:
        """What evaluations call the encoder: its recorded name, else the config's method."""
        return self.encoder.method or self.config["method"]["name"]

    @property
    def is_pretraining(self) -> bool:
        """A method's checkpoint as pretraining wrote it (not a classifier, an import or a head trunk)."""
        return self.classifier is None and self.imported is None and not self.encoder.head_layers
