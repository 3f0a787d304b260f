"""swiftsam: fast Segment Anything models, from official checkpoints to masks."""

from .api import DEFAULT_MODEL, build, load, load_export
from .errors import CheckpointError, DownloadError, InputError, ModelNotFoundError, SwiftSamError
from .modeling import ImageSpec, ModelContract, Sam
from .everything import MaskGenerator
from .predictor import Predictor
from .video import StreamingSession, VideoPredictor
from .version import __version__
from .zoo import get_entry, list_models

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "DownloadError",
    "ImageSpec",
    "ModelContract",
    "InputError",
    "MaskGenerator",
    "ModelNotFoundError",
    "Predictor",
    "Sam",
    "StreamingSession",
    "SwiftSamError",
    "VideoPredictor",
    "__version__",
    "build",
    "get_entry",
    "list_models",
    "load",
    "load_export",
]
