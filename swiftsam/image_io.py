"""Reading images from arrays, PIL images or files into H x W x 3 uint8 RGB, and finding image files.

What the array holds is what every image viewer shows:

- Files and PIL images are turned upright as their EXIF Orientation tag says (phone photos).
- Values become 8 bits by one rule (``load_image`` says which).
- A file over ``max_pixels`` is refused from its header, before it is decoded (decompression bombs).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import InputError

ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike]
MaxPixels = Union[int, None, Literal["pil"]]
# the image files a folder is searched for (any case): everything mode, training, quantization calibration
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_PIL_LIMIT_LOCK = threading.Lock()


class ImageTooLargeError(InputError):
    """An image file with more pixels than the limit (``max_pixels``), refused from its header."""


def load_image(image: ImageLike, max_pixels: MaxPixels = "pil", orient: bool = True) -> np.ndarray:
    """Return an H x W x 3 uint8 RGB array. Grayscale is replicated; alpha is dropped.

    Files and PIL images are turned as their EXIF Orientation tag says, so the array is the
    image as viewers show it (and prompts are given in that frame). ``orient=False`` keeps the stored
    pixel order (for annotations made on it: see ``eval.dataset.CocoImages.image``).

    Values become 8 bits as follows:

    - ``uint8``: as they are.
    - ``uint16`` arrays and 16-bit PIL images (modes ``I;16*``, e.g. 16-bit grayscale PNG): divided
      by 257 and rounded to the nearest integer (65535 -> 255, 257 * k -> k).
    - other integer types (PIL mode ``I``, int32 / int64 arrays): by their range: within 0..255 as
      they are, within 0..65535 as 16-bit values (divided by 257, rounded); beyond that refused.
    - floats (PIL mode ``F``): NaN or infinity anywhere is refused. Values within 0..1 are refused
      as ambiguous (multiply by 255 first); otherwise, as integers: within 0..255 rounded, within
      0..65535 divided by 257 and rounded; negative or larger values are refused.
    - bool, complex and object arrays are refused.

    ``max_pixels`` limits the pixels (width x height) of an image *file*, checked from its header
    before decoding, so a small file cannot expand into gigabytes: ``"pil"`` (the default) is PIL's
    limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 unless changed); an int sets another limit;
    ``None`` removes it (only for files you trust). Arrays and PIL images, already in memory,
    are not limited.
    """
    if isinstance(image, (str, os.PathLike)):
        image = _read_file(Path(image), max_pixels, orient)
    elif isinstance(image, Image.Image):
        image = _pil_to_array(_upright(image) if orient else image)
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected an image as a numpy array, PIL image or path, got {type(image).__name__}.")
    return _normalise_array(image)


def list_images(source: str | os.PathLike[str], recursive: bool = False, what: str = "image") -> list[Path]:
    """The image files of ``source``, sorted: the folder's files with an image suffix (``IMAGE_SUFFIXES``, any
    case; in subfolders too when ``recursive``), or ``source`` itself when it is a file.

    ``what`` names the folder in errors (``"calibration"``: "calibration folder not found: ...").
    """
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{what} folder not found: {path} is neither an image file nor a folder.")
    found = path.rglob("*") if recursive else path.iterdir()
    images = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        others = ", ".join(s for s in IMAGE_SUFFIXES if s not in (".jpg", ".png"))
        where = f"under {path} (searched recursively)" if recursive else f"in {path}"
        kind = "images" if what == "image" else f"{what} images"
        raise InputError(f"no .jpg or .png images (nor {others}) {where}: give a folder of {kind}.")
    return images


def load_image_bytes(data: bytes, max_pixels: MaxPixels = "pil", orient: bool = True, name: str = "the upload"
                     ) -> np.ndarray:
    """``load_image`` for an encoded image held in memory (an HTTP upload): the same checks as for a file (the
    pixel limit from the header before decoding, truncated or unreadable data refused, EXIF orientation).
    ``name`` is what messages call it."""
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"expected the image file's bytes, got {type(data).__name__}.")
    if len(data) == 0:
        raise InputError(f"{name} is empty: send an image file (JPEG, PNG, BMP, TIFF, WebP ...).")
    return _normalise_array(_decode(io.BytesIO(bytes(data)), name, max_pixels, orient))


def _read_file(path: Path, max_pixels: MaxPixels, orient: bool = True) -> np.ndarray:
    if not path.exists():
        raise InputError(f"image file not found: {path}. Check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file.")
    return _decode(path, path, max_pixels, orient)


def _decode(path, name, max_pixels: MaxPixels, orient: bool = True) -> np.ndarray:
    """Open ``path`` (a file path or a binary stream, called ``name`` in messages) with PIL, refusing more
    than ``max_pixels`` from the header, and decode it into an array."""
    limit = _pixel_limit(max_pixels)
    try:
        with _pil_allows(limit), Image.open(path) as im:
            w, h = im.size
            if limit is not None and w * h > limit:
                raise ImageTooLargeError(_too_large(name, f"{w}x{h} = {w * h:,} pixels", limit))
            im.load()
            return _pil_to_array(_upright(im) if orient else im)
    except Image.DecompressionBombError as e:  # PIL's own limit, met before the header could be checked
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageTooLargeError(_too_large(name, size, limit)) from None
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name} is not an image file that PIL can read (JPEG, PNG, BMP, TIFF, WebP ...)."
                         ) from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these three for damaged data
        raise InputError(f"could not read image {name}: {e}. Is the file truncated or corrupted?") from None


def _pixel_limit(max_pixels: MaxPixels) -> int | None:
    if max_pixels == "pil":
        return Image.MAX_IMAGE_PIXELS
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive number of pixels, None (no limit) or 'pil' (PIL's limit), "
                         f"got {max_pixels!r}.")
    return int(max_pixels)


def _too_large(path: Path, size: str, limit: int | None) -> str:
    limit = limit or Image.MAX_IMAGE_PIXELS
    return (f"{path} is {size}, over the limit of {limit:,} pixels that guards against decompression bombs. "
            f"If you trust the file, raise the limit: --max-pixels N on the command line (0: no limit), "
            f"or load_image(path, max_pixels=N) in Python (max_pixels=None: no limit).")


@contextmanager
def _pil_allows(limit: int | None) -> Iterator[None]:
    """Let PIL open files up to ``limit`` pixels: our check, from the header, is the one that refuses.

    PIL warns above ``Image.MAX_IMAGE_PIXELS`` and refuses above twice that, inside ``Image.open``;
    a limit the caller raised past that lifts PIL's for the time of the call (a process-wide setting,
    changed under a lock and restored).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil = Image.MAX_IMAGE_PIXELS
        if pil is None or (limit is not None and limit <= 2 * pil):
            yield
            return
        with _PIL_LIMIT_LOCK:
            Image.MAX_IMAGE_PIXELS = limit
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = pil


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF Orientation tag says (a new image), or ``im`` itself when upright."""
    if im.getexif().get(ExifTags.Base.Orientation, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _pil_to_array(im: Image.Image) -> np.ndarray:
    if im.width == 0 or im.height == 0:
        raise InputError(f"image has zero size ({im.width}x{im.height}).")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # wider than 8 bits: scaled by _normalise_array
        return np.asarray(im)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


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
        a = _to_uint8(a)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Any numeric image as uint8, by the rule in ``load_image``'s docstring."""
    if a.dtype.kind not in "iuf":
        raise InputError(f"image array must hold integers or floats, got dtype {a.dtype}.")
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # 16-bit by its type, whatever its values
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError("image contains NaN or infinite values; replace them (e.g. with np.nan_to_num) first.")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 65535:
        raise InputError(f"image values must lie in 0..255 (8-bit) or 0..65535 (16-bit), got {lo}..{hi}. "
                         f"Scale the image to 0..255 first.")
    if a.dtype.kind == "f" and hi <= 1.0:
        raise InputError("float image with values in 0..1: multiply by 255 (or convert to uint8) first.")
    if hi > 255:  # 16-bit values
        return np.rint(a / 257.0).astype(np.uint8) if a.dtype.kind == "f" else \
            ((a.astype(np.int64) + 128) // 257).astype(np.uint8)
    return np.rint(a).astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)
