"""selfsup: self-supervised visual representation learning, fast on a laptop CPU and on GPUs."""
__version__ = "0.1.0"
