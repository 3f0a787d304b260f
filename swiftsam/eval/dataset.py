"""A COCO-format dataset checked against its image folder: nothing missing goes unnoticed."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..image_io import MaxPixels, load_image
from ..masks import encode_mask
from ..optional import require


def _pycocotools():
    require("pycocotools", "COCO evaluation")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    return COCO, mask_utils


class CocoImages:
    """Images and instance annotations of a COCO annotation file, read from ``images_dir``."""

    def __init__(self, images_dir: str | os.PathLike[str], annotations: str | os.PathLike[str]) -> None:
        COCO, self.mask_utils = _pycocotools()
        self.images_dir = Path(images_dir)
        ann_path = Path(annotations)
        if not ann_path.is_file():
            raise InputError(f"annotation file not found: {ann_path}")
        if not self.images_dir.is_dir():
            raise InputError(f"image folder not found: {self.images_dir}")
        self.coco = self._load(COCO, ann_path)
        if "annotations" not in self.coco.dataset or "images" not in self.coco.dataset:
            raise InputError(f"{ann_path} has no 'images' / 'annotations': not a COCO instances file.")
        self.image_ids = sorted(self.coco.getImgIds())
        missing = [self.file_name(i) for i in self.image_ids if not self.path(i).is_file()]
        if missing and len(missing) == len(self.image_ids):
            raise InputError(
                f"none of the {len(missing)} images of {ann_path.name} are in {self.images_dir} "
                f"(e.g. {missing[0]}): the annotation file and the image folder do not match."
            )
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise InputError(f"{len(missing)} images of {ann_path.name} are missing from {self.images_dir}: {shown}")

    def _load(self, COCO, ann_path: Path):
        """The pycocotools ``COCO`` index of the annotation file (a subclass checks another format here)."""
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                return COCO(str(ann_path))
        except Exception as e:
            raise InputError(f"{ann_path} is not a COCO annotation file ({type(e).__name__}: {e}).") from None

    def file_name(self, image_id: int) -> str:
        return self.coco.imgs[image_id]["file_name"]

    def path(self, image_id: int) -> Path:
        return self.images_dir / self.file_name(image_id)

    def image(self, image_id: int, max_pixels: MaxPixels = "pil") -> np.ndarray:
        """The image in the frame of its annotations: upright as viewers show it (EXIF orientation
        applied) unless only the stored pixel order has the annotated height and width."""
        path, want = self.path(image_id), self.size(image_id)
        image = load_image(path, max_pixels=max_pixels)
        if image.shape[:2] != want:
            stored = load_image(path, max_pixels=max_pixels, orient=False)
            if stored.shape[:2] != want:
                raise InputError(f"{path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
                                 f"{want[1]}x{want[0]}: the annotation file does not belong to this image.")
            image = stored
        return image

    def size(self, image_id: int) -> tuple[int, int]:
        info = self.coco.imgs[image_id]
        return int(info["height"]), int(info["width"])

    def annotations(self, image_id: int) -> list[dict]:
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], iscrowd=None))

    def gt_mask(self, ann: dict) -> np.ndarray:
        return self.coco.annToMask(ann).astype(bool)

    def encode(self, mask: np.ndarray) -> dict:
        """The COCO RLE of an H x W mask (``masks.encode_mask``: the same bytes as everything mode's)."""
        return encode_mask(mask)
