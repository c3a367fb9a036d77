"""Reading a run back: the method, the encoder, the features or the classifier of a checkpoint, and
the starting point of a downstream strategy (a checkpoint's encoder or a fresh backbone).

A checkpoint's encoder is rebuilt alone, from the backbone section of its config and the entries
under its ``encoder`` prefix: heads, teachers and memory banks are neither built nor loaded. Only
a method's own embedding (``eval.features=embedding``) builds the whole method, since the
embedding needs its heads. What a classifier's checkpoint records for this is
:func:`classifier_meta`'s.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig, apply_overrides, resolve
from ..data import Splits, load_splits
from ..engine import checkpoint
from ..errors import SelfsupError
from ..learners import Classifier, classifier_views
from ..methods import Method, build_method, get_method
from ..views import EvalView, ImageInfo


def build_model(config: RunConfig, data: dict[str, Any]) -> Method:
    """The method of ``config`` for images described by ``data`` (channels, image_size, mean, std, images)."""
    backbone = config.backbone.build(data["channels"], data["image_size"])
    image = ImageInfo.of(data)
    return build_method(config.method_name, config.method_args, config.views, backbone, image,
                        data.get("images", 0), config.train.seed)


def load_checkpoint_config(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, dict[str, Any]]:
    """The checkpoint's state (weights on the CPU) and its config with ``overrides`` applied."""
    state = checkpoint.load(path)
    config = resolve(apply_overrides(state["config"], list(overrides)))
    checkpoint.check_compatible(state, config.to_dict())
    return config, state


def load_encoder(path: str | Path, overrides: list[str] = (), head_layers: int = 0,
                 ) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The encoder of a checkpoint, on the CPU, without (other) heads or banks.

    That is its backbone, or the trunk it was fine-tuned as; ``head_layers`` > 0 takes the
    backbone of a pretraining checkpoint with the first hidden layers of its projection head
    on top (SimCLR v2's fine-tuning trunk, :class:`~selfsup.models.HeadTrunk`).
    """
    config, state = load_checkpoint_config(path, overrides)
    data = state["data"]
    saved = state.get("encoder", {})
    if head_layers:
        if saved.get("head_layers") or "classifier" in state:
            raise SelfsupError(f"{state['path']} is a fine-tuned network already; its trunk is used as it is "
                               "(--head-layers 0)")
        method = build_model(config, data)
        checkpoint.load_weights(method, state["model"], state["path"])
        return method.fine_tune_trunk(head_layers), config, state
    # Stochastic depth is a pretraining regulariser (DINO's student): a network read back to be
    # evaluated, probed on a frozen trunk or transferred drops no paths.
    config.backbone = dataclasses.replace(config.backbone, drop_path=0.0)
    if saved.get("head_layers"):
        encoder = build_model(config, data).fine_tune_trunk(saved["head_layers"])
    else:
        encoder = config.backbone.build(data["channels"], data["image_size"])
    prefix = saved.get("prefix", "backbone")
    if "classifier" not in state and "imported" not in state and not saved.get("head_layers"):
        # A pretraining run: its student or its teacher, as eval.network says.
        method = get_method(config.method_name)
        prefix = method.network_prefix(config.eval.network)
        network = "teacher" if prefix == method.teacher_prefix else "student"
        state = {**state, "encoder": {**saved, "prefix": prefix, "network": network}}
    checkpoint.load_weights(encoder, checkpoint.submodule_weights(state["model"], prefix), state["path"])
    return encoder, config, state


def load_method(path: str | Path, overrides: list[str] = ()) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The whole trained method of a checkpoint (heads and banks included), on the CPU."""
    config, state = load_checkpoint_config(path, overrides)
    method = build_model(config, state["data"])
    checkpoint.load_weights(method, state["model"], state["path"])
    return method, config, state


def load_features(path: str | Path, overrides: list[str] = ()) -> tuple[nn.Module, Any, RunConfig, dict[str, Any]]:
    """What a checkpoint's features are, as ``eval.features`` says: its encoder (``encode`` None) or
    its method's own embedding (the whole method, ``encode`` its ``embed``)."""
    config, state = load_checkpoint_config(path, overrides)
    if config.eval.features == "embedding":
        if not get_method(config.method_name).has_embedding():
            raise SelfsupError(f"{config.method_name} has no embedding of its own; use eval.features=backbone")
        module, _, _ = load_method(path, overrides)
        return module, module.embed, config, state
    module, _, state = load_encoder(path, overrides)
    return module, None, config, state


def load_classifier(path: str | Path, overrides: list[str] = ()) -> tuple[Classifier, dict[str, Any]]:
    """The classifier (trunk + linear head) of a fine-tuned or distilled checkpoint, on the CPU."""
    encoder, _, state = load_encoder(path, overrides)
    if not isinstance(state.get("classifier"), dict):
        raise SelfsupError(f"{state['path']} holds no classifier (it is a pretraining checkpoint); "
                           "fine-tune it first: selfsup eval finetune CHECKPOINT")
    data = state["data"]
    image = ImageInfo.of(data)
    model = Classifier(encoder, state["classifier"]["classes"], classifier_views(image))
    head = state["classifier"].get("head_prefix", "head")  # a moving average's head where that is evaluated
    checkpoint.load_weights(model.head, checkpoint.submodule_weights(state["model"], head), state["path"])
    return model, state


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


RANDOM_INIT = "random initialisation"
"""The source of a network that starts from no checkpoint."""


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
        if checkpoint_path is not None:
            encoder, config, state = load_encoder(checkpoint_path, overrides)
            splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
            return cls(encoder, config, state["data"], splits, str(Path(state["path"]).resolve()))
        if config is None:
            raise SelfsupError("give a checkpoint to start from, or a config (-c) for a random initialisation")
        splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
        data = splits.info()
        config, encoder = fresh_network(config, [], data, seed)
        return cls(encoder, config, data, splits, RANDOM_INIT)

    @property
    def backbone_lr_scale(self) -> float:
        """The trunk's default rate as a fraction of the head's: 0.1 for pretrained weights (SimCLR's
        fine-tuning), 1 for a random initialisation, which has nothing to keep."""
        return 1.0 if self.source == RANDOM_INIT else 0.1

    def fresh_encoder(self) -> nn.Module:
        """A copy of the starting encoder: every run of a comparison starts from the same weights."""
        return copy.deepcopy(self.encoder)

    def eval_view(self) -> EvalView:
        return EvalView(self.data["image_size"], tuple(self.data["mean"]), tuple(self.data["std"]))
