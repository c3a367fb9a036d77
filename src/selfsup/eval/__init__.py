"""Evaluation protocols on frozen features: weighted kNN and the linear probe."""
from .features import extract_features, pixel_features
from .knn import knn_accuracy, knn_predict
from .linear import linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_predict", "linear_probe", "pixel_features"]
