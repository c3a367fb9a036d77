"""How long and how fast each downstream strategy trains unless told otherwise.

One table that the recipes (:meth:`selfsup.recipes.ClassifierTraining.for_strategy`), the command
line (its ``--epochs``/``--lr`` defaults and help) and the benchmarks read. It imports nothing, so
that ``selfsup --help`` stays instant: the parser is built before torch is imported.

Every strategy trains with SGD (momentum 0.9), weight decay 5e-4, no warm-up, the rate given at
batch 256 (scaled linearly to the batch size) and cosine-decayed to zero.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingDefaults:
    epochs: int
    lr: float
    """Peak SGD rate at batch 256."""
    backbone_lr_scale: float | None
    """Trunk rate as a fraction of the head's; None: the starting point's (0.1 from a checkpoint, 1 from
    random initialisation)."""
    weight_decay: float = 5e-4
    batch_size: int = 256


TRAINING_DEFAULTS: dict[str, TrainingDefaults] = {
    # SimCLR's fine-tuning protocol (SPEC section 7); the trunk at a tenth of the head's rate.
    "finetune": TrainingDefaults(epochs=30, lr=0.1, backbone_lr_scale=0.1),
    # A fresh network: the trunk learns at the head's rate.
    "supervised": TrainingDefaults(epochs=30, lr=0.1, backbone_lr_scale=1.0),
    "distill": TrainingDefaults(epochs=30, lr=0.1, backbone_lr_scale=1.0),
    "cluster": TrainingDefaults(epochs=30, lr=0.1, backbone_lr_scale=1.0),
    # Split Fashion-MNIST tasks of 2 classes are learnt in a few epochs; a low rate limits the drift
    # that forgetting measures.
    "continual": TrainingDefaults(epochs=3, lr=0.02, backbone_lr_scale=None),
    # FixMatch's rate (0.03); an epoch is a pass over the unlabelled images.
    "semisup": TrainingDefaults(epochs=10, lr=0.03, backbone_lr_scale=None),
    "multitask": TrainingDefaults(epochs=5, lr=0.1, backbone_lr_scale=None),
}
