"""Video frames read on demand: a JPEG folder, a video file (OpenCV) or any sequence / iterable of H x W x 3 frames.

Nothing is preloaded as float tensors (sam2 keeps every frame as a float S x S x 3 tensor: 12 MiB each at 1024):
files are decoded when a frame is needed; frames handed over in memory are kept as the uint8 arrays they are.
``to_model_input`` is SAM 2's video preprocessing (``sam2.utils.misc.load_video_frames``): a PIL resize of the
uint8 RGB frame to S x S (PIL's default, bicubic), scaled to 0..1 and normalised with ImageNet's mean / std.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

JPEG_SUFFIXES = (".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_frame(frame, where: str = "frame") -> np.ndarray:
    """An H x W x 3 uint8 RGB array (H x W grey is expanded), or a clear InputError."""
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray):
        raise InputError(f"{where}: expected an H x W x 3 uint8 array (RGB), got {type(frame).__name__}")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"{where}: expected an H x W x 3 RGB array, got shape {tuple(frame.shape)}")
    if frame.dtype != np.uint8:
        raise InputError(f"{where}: expected uint8 pixels (0..255), got {frame.dtype}; convert with .astype(np.uint8)")
    if min(frame.shape[:2]) < 1:
        raise InputError(f"{where}: empty frame of shape {tuple(frame.shape)}")
    return frame


def to_model_input(frame: np.ndarray, input_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """SAM 2's video preprocessing of one uint8 RGB frame: 1 x 3 x S x S float32 on ``device``."""
    img = np.asarray(Image.fromarray(frame).resize((input_size, input_size)))  # PIL default: bicubic
    x = torch.from_numpy(img / 255.0).permute(2, 0, 1).float()  # float64 / 255 then float32, as sam2
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).unsqueeze(0).to(device)


class FrameSource:
    """Random access to a video's frames as uint8 RGB arrays: ``len(src)``, ``src[i]``, ``src.height`` / ``src.width``
    (of the first frame; every frame must have that size)."""

    height: int
    width: int

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise InputError(f"frame index {index!r} is out of range: the video has {n} frames (0..{n - 1})")
        frame = check_frame(self.read(int(index)), f"frame {index}")
        if frame.shape[:2] != (self.height, self.width):
            raise InputError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the video's first frame is "
                f"{self.width}x{self.height}; every frame of a video must have one size"
            )
        return frame


class JpegFolder(FrameSource):
    """``<folder>/<n>.jpg`` frames, ordered by their number as sam2 does (by name when the names are not numbers)."""

    def __init__(self, folder: Path) -> None:
        names = [p for p in os.listdir(folder) if os.path.splitext(p)[1].lower() in JPEG_SUFFIXES]
        if not names:
            raise InputError(f"no JPEG frames (*.jpg, *.jpeg) in {folder}; give a folder of frames, a video file "
                             "or a list of H x W x 3 arrays")
        stems = [os.path.splitext(p)[0] for p in names]
        numeric = all(s.isdigit() for s in stems)
        self.paths = [folder / p for p in sorted(names, key=(lambda p: int(os.path.splitext(p)[0])) if numeric else None)]
        first = self.read(0)
        self.height, self.width = first.shape[:2]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        try:
            with Image.open(self.paths[index]) as img:
                return np.asarray(img.convert("RGB"))
        except OSError as e:
            raise InputError(f"cannot read frame {self.paths[index]}: {e}") from e


class VideoFile(FrameSource):
    """A video file decoded with OpenCV: frames are counted once, then decoded when asked for (sequential reads
    continue the stream; a jump seeks)."""

    def __init__(self, path: Path) -> None:
        import cv2

        self._cv2 = cv2
        self.path = path
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise InputError(f"cannot open video {path} (OpenCV could not decode it); convert it to mp4 (H.264) "
                             "or extract JPEG frames into a folder")
        n = 0
        first = None
        while True:
            ok, bgr = cap.read() if first is None else (cap.grab(), None)
            if not ok:
                break
            if first is None:
                first = bgr
            n += 1
        cap.release()
        if first is None:
            raise InputError(f"video {path} has no decodable frames")
        self._n = n
        self.height, self.width = first.shape[:2]
        self._cap = None
        self._next = 0

    def __len__(self) -> int:
        return self._n

    def read(self, index: int) -> np.ndarray:
        cv2 = self._cv2
        if self._cap is None or index != self._next:
            if self._cap is None:
                self._cap = cv2.VideoCapture(str(self.path))
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = self._cap.read()
        if not ok:
            raise InputError(f"cannot decode frame {index} of {self.path}")
        self._next = index + 1
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class InMemoryFrames(FrameSource):
    """Frames given as arrays (a list, a T x H x W x 3 array, a generator): kept as uint8, never as float tensors."""

    def __init__(self, frames: Iterable) -> None:
        self.frames: list[np.ndarray] = []
        for i, f in enumerate(frames):
            f = check_frame(f, f"frame {i}")
            if self.frames and f.shape != self.frames[0].shape:
                raise InputError(f"frame {i} has shape {f.shape} but frame 0 has {self.frames[0].shape}; "
                                 "every frame of a video must have one size")
            self.frames.append(f)
        if not self.frames:
            raise InputError("the video has no frames")
        self.height, self.width = self.frames[0].shape[:2]

    def __len__(self) -> int:
        return len(self.frames)

    def read(self, index: int) -> np.ndarray:
        return self.frames[index]


def open_video(video) -> FrameSource:
    """A :class:`FrameSource` for a JPEG folder, a video file, a FrameSource, or frames (sequence / iterable of
    H x W x 3 uint8 arrays, or one T x H x W x 3 array)."""
    if isinstance(video, FrameSource):
        return video
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if path.is_dir():
            return JpegFolder(path)
        if path.is_file():
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                raise InputError(f"{path} is not a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder of JPEG frames")
            return VideoFile(path)
        raise InputError(f"video {path} does not exist: give a folder of JPEG frames, a video file or frames")
    if isinstance(video, np.ndarray):
        if video.ndim != 4:
            raise InputError(f"a video array must be T x H x W x 3, got shape {video.shape}")
        return InMemoryFrames(list(video))
    if isinstance(video, (Sequence, Iterable)) and not isinstance(video, (bytes, dict)):
        return InMemoryFrames(video)
    raise InputError(f"cannot read a video from {type(video).__name__}: give a folder of JPEG frames, a video file "
                     "or an iterable of H x W x 3 uint8 frames")
