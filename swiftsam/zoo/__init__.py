"""Model zoo: named models, official checkpoints, download cache and loading."""

from . import models as _models  # noqa: F401  (registers the entries)
from .checkpoint import load_checkpoint, read_state_dict
from .hub import cache_dir, cached_path, download
from .registry import ModelEntry, Weights, get_entry, list_models, register

__all__ = [
    "ModelEntry",
    "Weights",
    "cache_dir",
    "cached_path",
    "download",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "read_state_dict",
    "register",
]
