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
from ..data import DataFacts, Splits, load_splits
from ..engine import checkpoint
from ..errors import SelfsupError
from ..learners import Classifier, classifier_views
from ..methods import Method, build_method, get_method
from ..views import EvalView, ImageInfo
from .meta import EncoderRef, RunMeta


def build_model(config: RunConfig, data: DataFacts) -> Method:
    """The method of ``config`` for the images ``data`` describes."""
    backbone = config.backbone.build(data.channels, data.image_size)
    return build_method(config.method_name, config.method_args, config.views, backbone, ImageInfo.of(data),
                        data.images, config.train.seed)


def load_checkpoint_config(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, RunMeta]:
    """The checkpoint (weights on the CPU) and its config with ``overrides`` applied."""
    state = checkpoint.load(path)
    config = resolve(apply_overrides(state["config"], list(overrides)))
    checkpoint.check_compatible(state, config.to_dict(), readout_may_differ=True)
    return config, RunMeta.of(state)


def load_encoder(path: str | Path, overrides: list[str] = (), head_layers: int = 0,
                 ) -> tuple[nn.Module, RunConfig, RunMeta]:
    """The encoder of a checkpoint, on the CPU, without (other) heads or banks.

    That is its backbone, or the trunk it was fine-tuned as; ``head_layers`` > 0 takes the
    backbone of a pretraining checkpoint with the first hidden layers of its projection head
    on top (SimCLR v2's fine-tuning trunk, :class:`~selfsup.models.HeadTrunk`).
    """
    config, meta = load_checkpoint_config(path, overrides)
    if head_layers:
        if not meta.is_pretraining:
            what = "imported backbone weights, with no projection head" if meta.imported else \
                "a fine-tuned network already"
            raise SelfsupError(f"{meta.path} is {what}; its trunk is used as it is (--head-layers 0)")
        method = build_model(config, meta.data)
        checkpoint.load_weights(method, meta.weights, str(meta.path))
        return method.fine_tune_trunk(head_layers), config, meta
    # Stochastic depth is a pretraining regulariser (DINO's student): a network read back to be
    # evaluated, probed on a frozen trunk or transferred drops no paths.
    config.backbone = dataclasses.replace(config.backbone, drop_path=0.0)
    if meta.encoder.head_layers:
        encoder = build_model(config, meta.data).fine_tune_trunk(meta.encoder.head_layers)
    else:
        encoder = config.backbone.build(meta.data.channels, meta.data.image_size)
    if meta.is_pretraining:  # its student or its teacher, as eval.network says
        method = get_method(config.method_name)
        prefix = method.network_prefix(config.eval.network)
        network = "teacher" if prefix == method.teacher_prefix else "student"
        meta = dataclasses.replace(meta, encoder=dataclasses.replace(meta.encoder, prefix=prefix, network=network))
    checkpoint.load_weights(encoder, checkpoint.submodule_weights(meta.weights, meta.encoder.prefix), str(meta.path))
    return encoder, config, meta


def load_method(path: str | Path, overrides: list[str] = ()) -> tuple[nn.Module, RunConfig, RunMeta]:
    """The whole trained method of a checkpoint (heads and banks included), on the CPU."""
    config, meta = load_checkpoint_config(path, overrides)
    method = build_model(config, meta.data)
    checkpoint.load_weights(method, meta.weights, str(meta.path))
    return method, config, meta


def load_features(path: str | Path, overrides: list[str] = ()) -> tuple[nn.Module, Any, RunConfig, RunMeta]:
    """What a checkpoint's features are, as ``eval.features`` says: its encoder (``encode`` None) or
    its method's own embedding (the whole method, ``encode`` its ``embed``)."""
    config, meta = load_checkpoint_config(path, overrides)
    if config.eval.features == "embedding":
        if not get_method(config.method_name).has_embedding():
            raise SelfsupError(f"{config.method_name} has no embedding of its own; use eval.features=backbone")
        module, _, _ = load_method(path, overrides)
        return module, module.embed, config, meta
    module, _, meta = load_encoder(path, overrides)
    return module, None, config, meta


def load_classifier(path: str | Path, overrides: list[str] = ()) -> tuple[Classifier, RunMeta]:
    """The classifier (trunk + linear head) of a fine-tuned or distilled checkpoint, on the CPU."""
    encoder, _, meta = load_encoder(path, overrides)
    if meta.classifier is None:
        raise SelfsupError(f"{meta.path} holds no classifier (it is a pretraining checkpoint); "
                           "fine-tune it first: selfsup eval finetune CHECKPOINT")
    model = Classifier(encoder, meta.classifier["classes"], classifier_views(ImageInfo.of(meta.data)))
    head = meta.classifier.get("head_prefix", "head")  # a moving average's head where that is evaluated
    checkpoint.load_weights(model.head, checkpoint.submodule_weights(meta.weights, head), str(meta.path))
    return model, meta


def backbone_changes(student: list[str]) -> list[str]:
    """``student`` checked to be changes of a backbone section (``backbone.KEY=VALUE``): refused
    before anything is loaded."""
    bad = [item for item in student if not item.startswith("backbone.")]
    if bad:
        raise SelfsupError(f"student settings are backbone keys (backbone.name=..., backbone.width=...), got {bad}")
    return list(student)


def fresh_network(config: RunConfig, student: list[str], data: DataFacts, seed: int
                  ) -> tuple[RunConfig, nn.Module]:
    """A freshly initialised backbone for the images of ``data``: ``config``'s, with the ``student``
    changes (:func:`backbone_changes`) to its backbone section; the config it was built from."""
    config = resolve(apply_overrides(config.to_dict(), list(student)))
    torch.manual_seed(seed)
    return config, config.backbone.build(data.channels, data.image_size)


def classifier_meta(config: RunConfig, data: DataFacts, head_layers: int = 0, *, origin: str | None = None,
                    **facts: Any) -> dict[str, Any]:
    """What a classifier's checkpoints record so that ``load_encoder`` / ``load_classifier`` rebuild it:
    the config and data facts, the trunk under ``encoder`` (with its head layers and ``origin``, the
    name evaluations give it; default the config's method), the head's facts.
    Its evaluation uses the trunk's features: the pretraining method's own embedding (Selfie's,
    CPC's presets ask for it) is not part of a classifier."""
    saved = config.to_dict()
    saved["eval"]["features"] = "backbone"
    return RunMeta.record(saved, data, EncoderRef("encoder", origin or config.method_name, head_layers),
                          classifier=facts)


RANDOM_INIT = "random initialisation"
"""The source of a network that starts from no checkpoint."""


@dataclass
class StartingPoint:
    """The encoder a downstream strategy starts from (a checkpoint's, or a config's backbone at random
    initialisation), with the config and data facts it was built for and the splits to train on."""

    encoder: nn.Module
    config: RunConfig
    data: DataFacts
    splits: Splits
    source: str
    """The checkpoint's resolved path, or ``random initialisation``."""

    @classmethod
    def load(cls, checkpoint_path: str | Path | None, config: RunConfig | None, overrides: list[str] = (), *,
             seed: int = 0, quiet: bool = False) -> StartingPoint:
        if checkpoint_path is not None:
            encoder, config, meta = load_encoder(checkpoint_path, overrides)
            splits = load_splits(config.data, seed=config.train.seed, labeled=True, quiet=quiet)
            return cls(encoder, config, meta.data, splits, meta.source)
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
        return EvalView.of(self.data)
