"""Detections from files: a COCO results JSON or a folder of YOLO txt files, per image, with a score threshold
and a class filter; and image ids (a COCO file's ``images[].file_name``, or numeric file names)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class Detections:
    """One image's detections: boxes N x 4 (x0, y0, x1, y1 pixels), scores N, category ids N."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    category_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.category_ids[keep])

    def filtered(self, score_thresh: float = 0.0, classes: set[int] | None = None) -> Detections:
        """Those scored at least ``score_thresh`` and of ``classes`` (all when None)."""
        keep = self.scores >= score_thresh
        if classes is not None:
            keep &= np.isin(self.category_ids, sorted(classes))
        return self.select(keep)


def image_ids(images: list[Path], annotations: str | Path | None = None) -> dict[str, int]:
    """File name -> COCO image id: from ``annotations`` (its ``images[].file_name``) when given, else the numeric
    file names (COCO's 000000000139.jpg is image 139), else the images' positions in the sorted list."""
    if annotations is not None:
        path = Path(annotations)
        try:
            coco = json.loads(path.read_text())
            ids = {Path(im["file_name"]).name: int(im["id"]) for im in coco["images"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"cannot read image ids from --annotations {path}: {type(e).__name__}: {e}") from None
        missing = [im.name for im in images if im.name not in ids]
        if missing:
            raise InputError(f"{len(missing)} image(s) are not in {path}: {', '.join(missing[:5])}; give the "
                             f"annotation file of these images, or none (numeric file names are their ids).")
        return {im.name: ids[im.name] for im in images}
    if all(im.stem.isdigit() for im in images):
        return {im.name: int(im.stem) for im in images}
    return {im.name: i for i, im in enumerate(images)}


def _number(value: object, what: str) -> float:
    """A finite number (boxes past the image are dealt with later: clipped within a pixel, else reported)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise InputError(f"{what} must be a finite number, got {value!r}.")
    return v


def load_coco_detections(path: Path, ids: dict[str, int]) -> dict[str, Detections]:
    """A COCO results JSON ([{image_id, bbox: [x, y, w, h], score, category_id}, ...]) per image file name."""
    try:
        dets = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read detections {path}: {e}") from None
    if not isinstance(dets, list) or not all(isinstance(d, dict) for d in dets):
        raise InputError(f"{path} must be a COCO results list: [{{'image_id', 'bbox': [x, y, w, h], 'score', "
                         f"'category_id'}}, ...].")
    by_id: dict[int, list] = {}
    for i, d in enumerate(dets):
        missing = {"image_id", "bbox"} - set(d)
        if missing:
            raise InputError(f"detection {i} in {path} lacks {', '.join(sorted(missing))}.")
        b = d["bbox"]
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise InputError(f"detection {i} in {path}: bbox must be [x, y, w, h], got {b!r}.")
        x, y, w, h = (_number(v, f"detection {i} in {path}: bbox") for v in b)
        score = _number(d.get("score", 1.0), f"detection {i} in {path}: score")
        by_id.setdefault(d["image_id"], []).append(([x, y, x + w, y + h], score, int(d.get("category_id", 1))))
    known = set(ids.values())
    unknown = sorted(set(by_id) - known, key=str)
    if unknown and len(unknown) == len(by_id):
        raise InputError(f"none of the image ids in {path} ({', '.join(map(str, unknown[:5]))}) belong to the images "
                         f"given: pass --annotations (the COCO file whose images[].file_name maps files to ids).")
    return {name: _stack(by_id.get(i, [])) for name, i in ids.items()}


def load_yolo_detections(folder: Path, images: list[Path], sizes: dict[str, tuple[int, int]] | None = None
                         ) -> dict[str, Detections]:
    """A folder of YOLO txt files (``<stem>.txt``: ``class cx cy w h [confidence]`` per line, normalised to the
    image) per image file name; an image without a file has no detections. ``sizes`` (H, W) per image name,
    read from the files when not given. Category ids are the YOLO class ids."""
    from PIL import Image

    out = {}
    for im in images:
        txt = folder / f"{im.stem}.txt"
        if not txt.is_file():
            out[im.name] = Detections()
            continue
        if sizes and im.name in sizes:
            h, w = sizes[im.name]
        else:
            try:
                with Image.open(im) as pil:
                    w, h = pil.size
            except OSError as e:
                raise InputError(f"cannot read the size of {im} for its YOLO boxes: {e}") from None
        rows = []
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (5, 6):
                raise InputError(f"{txt}:{n}: a YOLO line is 'class cx cy w h [confidence]', got {line!r}.")
            cls, cx, cy, bw, bh, *conf = (_number(v, f"{txt}:{n}") for v in parts)
            if cls != int(cls) or cls < 0:
                raise InputError(f"{txt}:{n}: the class must be a non-negative integer, got {parts[0]!r}.")
            rows.append(([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h],
                         conf[0] if conf else 1.0, int(cls)))
        out[im.name] = _stack(rows)
    return out


def load_detections(path: str | Path, images: list[Path], ids: dict[str, int]) -> dict[str, Detections]:
    """``--detections``: a COCO results JSON file or a folder of YOLO txt files."""
    path = Path(path)
    if path.is_dir():
        if not any(path.glob("*.txt")):
            raise InputError(f"{path} has no .txt files: --detections takes a COCO results JSON or a folder of YOLO "
                             f"txt files (<image stem>.txt).")
        return load_yolo_detections(path, images)
    if not path.is_file():
        raise InputError(f"detections not found: {path} (a COCO results JSON, or a folder of YOLO txt files).")
    return load_coco_detections(path, ids)


def _stack(rows: list) -> Detections:
    if not rows:
        return Detections()
    boxes = np.array([r[0] for r in rows], dtype=np.float64)
    scores = np.array([r[1] for r in rows], dtype=np.float64)
    return Detections(boxes, scores, np.array([r[2] for r in rows], dtype=np.int64))
