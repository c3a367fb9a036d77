"""Backbones (ResNet, ViT, toy) and heads."""
from .backbones import (BACKBONES, RESNET_BLOCKS, STAGES, BackboneConfig, ResNet, ToyNet, build_backbone,
                        torchvision_resnet)
from .heads import AttentionPooling, AttentionPoolTrunk, DINOHead, HeadTrunk, mlp, unused_stages
from .vit import VisionTransformer

__all__ = ["AttentionPoolTrunk", "AttentionPooling", "BACKBONES", "RESNET_BLOCKS", "STAGES", "BackboneConfig", "DINOHead", "HeadTrunk", "ResNet", "ToyNet",
           "VisionTransformer", "build_backbone", "mlp", "torchvision_resnet", "unused_stages"]
