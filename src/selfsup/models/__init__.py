"""Backbones (ResNet, toy) and heads."""
from .backbones import (BACKBONES, RESNET_BLOCKS, STAGES, BackboneConfig, ResNet, ToyNet, build_backbone,
                        torchvision_resnet)
from .heads import mlp

__all__ = ["BACKBONES", "RESNET_BLOCKS", "STAGES", "BackboneConfig", "ResNet", "ToyNet", "build_backbone", "mlp",
           "torchvision_resnet"]
