"""Backbones (ResNet, ViT, toy) and heads."""
from .backbones import (BACKBONES, RESNET_BLOCKS, STAGES, BackboneConfig, ResNet, ToyNet, build_backbone,
                        torchvision_resnet)
from .heads import AttentionPooling, AttentionPoolTrunk, DINOHead, HeadTrunk, freeze_after, mlp
from .vit import VisionTransformer

__all__ = ["BACKBONES", "RESNET_BLOCKS", "STAGES", "AttentionPoolTrunk", "AttentionPooling", "BackboneConfig",
           "DINOHead", "HeadTrunk", "ResNet", "ToyNet", "VisionTransformer", "build_backbone", "freeze_after", "mlp",
           "torchvision_resnet"]
