"""SAM 2 video: ``VideoPredictor`` (SAM2VideoPredictor's API, lazy frames, objects batched per frame) and the
streaming session for frames that arrive one at a time (fixed-capacity memory)."""

from .predictor import VideoPredictor, VideoState
from .streaming import StreamingSession

__all__ = ["StreamingSession", "VideoPredictor", "VideoState"]
