"""Datasets (in memory, memory-mapped, or streamed from image files), their on-disk formats, the
splits of a run, and the batch loaders."""
from .cache import cache_folder, read_cache, write_cache
from .catalog import DATASETS, FILE_FORMATS, SOURCES, USER_FORMATS, DatasetSpec, Download, find_root, load_dataset, prepare
from .dataset import ImageDataset, describe
from .loader import BatchLoader
from .splits import DataConfig, DataFacts, Splits, label_index, labeled_part, load_splits, with_label_noise
from .stream import CropSpec, FileStore, StreamLoader, default_workers

__all__ = ["DATASETS", "FILE_FORMATS", "SOURCES", "USER_FORMATS", "BatchLoader", "CropSpec", "DataConfig", "DataFacts",
           "DatasetSpec", "Download", "FileStore", "ImageDataset", "Splits", "StreamLoader", "cache_folder",
           "default_workers", "describe", "find_root", "label_index", "labeled_part", "load_dataset", "load_splits",
           "prepare", "read_cache", "with_label_noise", "write_cache"]
