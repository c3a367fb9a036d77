"""The engine: the fit loop, checkpoints, collectives, optimisers and schedules, metrics, runtime.

Everything here works on any ``nn.Module`` whose forward takes a :class:`Batch` and the training
progress and returns ``{"loss": ...}``. It knows no method, dataset or run config; the one
section of configuration it reads is its own, :class:`OptimConfig` (the ``optim`` section).
"""
from .contracts import BadData, Batch, Freeze, Images, NonFiniteLoss, Precropped, Trainable, base_images
from .preemption import Preempted
from .loop import Engine
from .steps import preserved, to_channels_last
from .optim import OptimConfig, Schedule, build_optimizer, cosine_schedule, default_param_groups, scaled_lr
from .runtime import Precision, pick_device, resolve_precision

__all__ = ["BadData", "Batch", "Engine", "Images", "Precropped", "base_images", "Freeze", "NonFiniteLoss", "OptimConfig", "Preempted", "Precision", "Schedule", "Trainable",
           "build_optimizer", "cosine_schedule", "default_param_groups", "pick_device", "preserved", "resolve_precision",
           "scaled_lr", "to_channels_last"]
