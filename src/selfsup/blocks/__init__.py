"""Reusable parts of methods, each tested alone: memory bank, FIFO queue, EMA teachers,
shuffle-BN and split BN, multi-crop forward, HOG targets."""
from .ema import Teacher, ema_update, frozen_copy, momentum_schedule
from .hog import hog, patch_targets
from .memory import MemoryBank
from .multicrop import forward_by_resolution, forward_views
from .queue import FeatureQueue
from .shuffle_bn import shuffled_forward
from .split_bn import SplitBatchNorm2d, split_batch_norm

__all__ = ["FeatureQueue", "MemoryBank", "SplitBatchNorm2d", "Teacher", "ema_update", "forward_by_resolution",
           "forward_views", "frozen_copy", "hog", "momentum_schedule", "patch_targets", "shuffled_forward", "split_batch_norm"]
