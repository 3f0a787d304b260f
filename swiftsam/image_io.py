"""Reading images from arrays, PIL images or files into H x W x 3 uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike]


def load_image(image: ImageLike) -> np.ndarray:
    """Return an H x W x 3 uint8 RGB array. Grayscale is replicated; alpha is dropped."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise InputError(f"image file not found: {path}. Check the path.")
        if path.is_dir():
            raise InputError(f"{path} is a directory, not an image file.")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.convert("RGB") if im.mode != "RGB" else im.copy()
        except UnidentifiedImageError:
            raise InputError(f"{path} is not an image file that PIL can read (JPEG, PNG, BMP, TIFF, WebP ...).") from None
        except OSError as e:
            raise InputError(f"could not read image {path}: {e}. Is the file truncated or corrupted?") from None
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InputError(f"image has zero size ({image.width}x{image.height}).")
        image = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected an image as a numpy array, PIL image or path, got {type(image).__name__}.")
    return _normalise_array(image)


def _normalise_array(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"image array must be H x W, H x W x 3 (RGB) or H x W x 4 (RGBA); got shape {a.shape}.")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image has zero size (shape {a.shape}).")
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
            raise InputError(f"image array must hold numbers in 0..255, got dtype {a.dtype}.")
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            raise InputError("float image with values in 0..1: multiply by 255 and convert to uint8 first.")
        if a.size and (a.min() < 0 or a.max() > 255):
            raise InputError(f"image values must lie in 0..255, got {a.min()}..{a.max()}.")
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)
