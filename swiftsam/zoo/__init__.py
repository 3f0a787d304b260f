"""Model zoo: named models, official checkpoints, download cache and loading."""

from . import models as _models  # noqa: F401  (registers the entries)
from .checkpoint import load_checkpoint, read_checkpoint, read_state_dict, save_checkpoint
from .hub import cache_dir, cached_path, download
from .bundled import read_bundled, write_fp16
from .registry import Bundled, ModelEntry, Weights, get_entry, list_models, register

__all__ = [
    "Bundled",
    "ModelEntry",
    "Weights",
    "cache_dir",
    "cached_path",
    "download",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "read_bundled",
    "read_checkpoint",
    "read_state_dict",
    "register",
    "save_checkpoint",
    "write_fp16",
]
