"""Backbones (ResNet, toy) and heads."""
from .backbones import BACKBONES, STAGES, ResNet, ToyNet, build_backbone, torchvision_resnet
from .heads import mlp

__all__ = ["BACKBONES", "STAGES", "ResNet", "ToyNet", "build_backbone", "mlp", "torchvision_resnet"]
