"""``selfsup export``: a trained encoder as weights for plain torchvision or timm (ResNet and ViT),
a JSON card (architecture, preprocessing, provenance, results, the few lines of Python that
load the weights) and optionally an ONNX file checked with onnxruntime; ``selfsup import``: the
other way, a torchvision ResNet's weights as a selfsup checkpoint.

Nothing of selfsup is needed to use an export: the card's ``recipe`` imports only torch, the
target library and safetensors.
"""
from .backbone import export_backbone
from .importing import import_torchvision, read_state_dict
from .onnx_check import export_onnx
from .resnet import timm_resnet_recipe, torchvision_recipe
from .target import FORMATS
from .vit import timm_vit_recipe, torchvision_vit_recipe

__all__ = ["FORMATS", "export_backbone", "export_onnx", "import_torchvision", "read_state_dict",
           "timm_resnet_recipe", "timm_vit_recipe", "torchvision_recipe", "torchvision_vit_recipe"]
