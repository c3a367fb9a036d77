"""Evaluation protocols on frozen features: weighted kNN, the linear probe, the layer-wise probe,
few-shot episodes, k-means, and BatchNorm recalibration. Nothing here reads configs or checkpoints (see
:mod:`selfsup.recipes.evaluate`)."""
from .calibrate import recalibrate_batchnorm
from .evaluator import PROTOCOLS, EvalConfig, Evaluator, record, results_table
from .features import extract_features, pixel_features
from .fewshot import Episode, fewshot_accuracy, nearest_centroid, sample_episodes
from .kmeans import KMeansResult, kmeans
from .knn import cosine_topk, knn_accuracy, knn_predict
from .linear import confusion_matrix, linear_probe

__all__ = ["PROTOCOLS", "Episode", "EvalConfig", "Evaluator", "KMeansResult", "confusion_matrix", "cosine_topk",
           "extract_features", "fewshot_accuracy", "kmeans", "knn_accuracy", "knn_predict", "linear_probe", "nearest_centroid",
           "pixel_features", "recalibrate_batchnorm", "record", "results_table", "sample_episodes"]
