"""Using a trained encoder: embedding images into an index and searching it (``selfsup embed``,
``selfsup search``), and inspecting its features for the report (``selfsup report``)."""
from .embed import Encoder, Index, SearchResult, default_index_dir, embed, encoder_fingerprint, search
from .inspect import inspect_checkpoint, inspect_run, project_2d

__all__ = ["Encoder", "Index", "SearchResult", "default_index_dir", "embed", "encoder_fingerprint",
           "inspect_checkpoint", "inspect_run", "project_2d", "search"]
