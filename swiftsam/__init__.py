"""swiftsam: fast Segment Anything models, from official checkpoints to masks."""

from .api import DEFAULT_MODEL, build, load
from .errors import CheckpointError, DownloadError, InputError, ModelNotFoundError, SwiftSamError
from .modeling import ImageSpec, Sam
from .everything import MaskGenerator
from .predictor import Predictor
from .zoo import get_entry, list_models

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "DownloadError",
    "ImageSpec",
    "InputError",
    "MaskGenerator",
    "ModelNotFoundError",
    "Predictor",
    "Sam",
    "SwiftSamError",
    "build",
    "get_entry",
    "list_models",
    "load",
]
