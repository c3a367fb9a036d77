"""Datasets as in-memory uint8 tensors, their on-disk formats, and the batch loader."""
from .catalog import DATASETS, USER_FORMATS, DatasetSpec, Download, find_root, load_dataset
from .dataset import ImageDataset, describe
from .loader import BatchLoader

__all__ = ["DATASETS", "USER_FORMATS", "BatchLoader", "DatasetSpec", "Download", "ImageDataset", "describe",
           "find_root", "load_dataset"]
