"""Pack several annotated sources into one class-agnostic COCO training set of resized JPEGs.

The result is one image folder plus one ``instances.json`` (RLE masks at the packed resolution, every
object in category 1), which is what ``train-masks`` reads and what ``distill-encoder`` reads as an image
folder. Resized JPEGs keep a set small enough to travel to a GPU machine (``run --carry``).

Sources: COCO instance/keypoint files (polygons or RLE; crowd regions dropped) and DAVIS roots
(``JPEGImages/<seq>/*.jpg`` + ``Annotations/<seq>/*.png``, every ``davis_stride``-th frame).
Every file is written atomically, ``instances.json`` last.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..masks import encode_mask, rle_bbox
from ..utils import atomic_path


@dataclass(frozen=True)
class Source:
    kind: str  # "coco" or "davis"
    images: str
    annotations: str | None = None  # coco only
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> Source:
        """``coco:IMAGES:ANNOTATIONS`` or ``davis:ROOT``."""
        kind, _, rest = text.partition(":")
        if kind == "coco" and rest.count(":") == 1:
            images, annotations = rest.split(":")
            return cls("coco", images, annotations, Path(images).parent.name + "/" + Path(images).name)
        if kind == "davis" and rest:
            return cls("davis", rest, None, Path(rest).name)
        raise InputError(f"bad source {text!r}: expected coco:IMAGES:ANNOTATIONS or davis:ROOT.")


def _resize(image: Image.Image, size: int, resample: int) -> Image.Image:
    w, h = image.size
    scale = size / max(w, h)
    if scale >= 1:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def _items(source: Source, davis_stride: int):
    """(key, image path, list of full-resolution boolean masks) for every usable image."""
    if source.kind == "coco":
        from ..eval.dataset import CocoImages

        data = CocoImages(source.images, source.annotations)
        for image_id in data.image_ids:
            anns = [a for a in data.annotations(image_id) if not a.get("iscrowd", 0) and a.get("area", 0) > 0]
            if anns:
                yield f"{source.name}/{image_id}", data.path(image_id), lambda anns=anns, d=data: [d.gt_mask(a) for a in anns]
        return
    root = Path(source.images)
    frames = root / "JPEGImages"
    if not frames.is_dir() or not (root / "Annotations").is_dir():
        raise InputError(f"{root} is not a DAVIS root (needs JPEGImages/<seq>/ and Annotations/<seq>/).")
    for seq in sorted(p for p in frames.iterdir() if p.is_dir()):
        for frame in sorted(seq.glob("*.jpg"))[::davis_stride]:
            label = root / "Annotations" / seq.name / (frame.stem + ".png")
            if label.is_file():
                yield (f"{source.name}/{seq.name}/{frame.stem}", frame,
                       lambda label=label: [np.asarray(Image.open(label).convert("L")) > 127])


def pack(sources: list[Source], out: str | os.PathLike[str], size: int = 512, davis_stride: int = 3,
         min_area: int = 16, quality: int = 90, progress: bool = True) -> dict:
    """Write ``out/images/*.jpg`` and ``out/instances.json``; returns a summary."""
    if not sources:
        raise InputError("give at least one source (coco:IMAGES:ANNOTATIONS or davis:ROOT).")
    if size < 64:
        raise InputError(f"size must be >= 64, got {size}.")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, per_source = [], [], {}
    items = [(s, it) for s in sources for it in _items(s, davis_stride)]
    try:
        from tqdm import tqdm

        iterator = tqdm(items, desc="pack", disable=not progress)
    except ImportError:  # pragma: no cover
        iterator = items
    for source, (key, path, masks_fn) in iterator:
        image_id = len(images) + 1
        file_name = f"{image_id:06d}.jpg"
        with Image.open(path) as im:
            full = im.convert("RGB")
        small = _resize(full, size, Image.BILINEAR)
        target = out / "images" / file_name
        with atomic_path(target) as tmp:
            small.save(tmp, format="JPEG", quality=quality)
        w, h = small.size
        kept = 0
        for mask in masks_fn():
            m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) > 127
            area = int(m.sum())
            if area < min_area:
                continue
            rle = encode_mask(m)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": rle, "area": area, "bbox": rle_bbox(rle), "iscrowd": 0})
            kept += 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h, "source": key})
        per_source.setdefault(source.name, {"images": 0, "objects": 0})
        per_source[source.name]["images"] += 1
        per_source[source.name]["objects"] += kept
    summary = {"size": size, "davis_stride": davis_stride, "images": len(images), "objects": len(annotations),
               "sources": per_source}
    data = {"info": {"description": "swiftsam packed training set", **summary}, "images": images,
            "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    with atomic_path(out / "instances.json") as tmp:
        Path(tmp).write_text(json.dumps(data))
    return summary
