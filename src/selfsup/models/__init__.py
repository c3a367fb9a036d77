"""Backbones (ResNet, ViT, toy) and heads."""
from .backbones import (BACKBONES, RESNET_BLOCKS, STAGES, BackboneConfig, ResNet, ToyNet, build_backbone,
                        torchvision_resnet)
from .heads import DINOHead, HeadTrunk, mlp
from .vit import VisionTransformer

__all__ = ["BACKBONES", "RESNET_BLOCKS", "STAGES", "BackboneConfig", "DINOHead", "HeadTrunk", "ResNet", "ToyNet",
           "VisionTransformer", "build_backbone", "mlp", "torchvision_resnet"]
