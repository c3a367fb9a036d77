"""Datasets as in-memory uint8 tensors, their on-disk formats, the splits of a run, and the batch loader."""
from .catalog import DATASETS, USER_FORMATS, DatasetSpec, Download, find_root, load_dataset, prepare
from .dataset import ImageDataset, describe
from .loader import BatchLoader
from .splits import DataConfig, DataFacts, Splits, label_index, labeled_part, load_splits, with_label_noise

__all__ = ["DATASETS", "USER_FORMATS", "BatchLoader", "DataConfig", "DataFacts", "DatasetSpec", "Download", "ImageDataset",
           "Splits", "describe", "find_root", "label_index", "labeled_part", "load_dataset", "load_splits", "prepare",
           "with_label_noise"]
