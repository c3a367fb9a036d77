"""Backbones (ResNet, ViT, toy) and heads."""
from .backbones import (BACKBONES, RESNET_BLOCKS, STAGES, Backbone, BackboneConfig, ResNet, StagedBackbone, ToyNet,
                        build_backbone, prefers_channels_last, torchvision_resnet, trunk_of)
from .heads import AttentionPooling, AttentionPoolTrunk, DINOHead, HeadTrunk, freeze_after, mlp
from .vit import VisionTransformer

__all__ = ["BACKBONES", "RESNET_BLOCKS", "STAGES", "AttentionPoolTrunk", "AttentionPooling", "Backbone",
           "BackboneConfig", "DINOHead", "HeadTrunk", "ResNet", "StagedBackbone", "ToyNet", "VisionTransformer",
           "build_backbone", "freeze_after", "mlp", "prefers_channels_last", "torchvision_resnet", "trunk_of"]
