"""Everything mode over an image or a folder: COCO-RLE JSON + overlay PNG per image, resumable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..image_io import load_image
from ..utils import atomic_path
from ..visualize import PALETTE
from .generator import MaskGenerator
from .mask_ops import decode_rle

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
RESULT_FORMAT = "swiftsam-everything/1"
CONFIG_NAME = "everything.config.json"


def list_images(source: str | Path) -> list[Path]:
    """One image file, or the images of a folder (sorted; not recursive)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}.")
        return images
    raise InputError(f"{path} is neither an image file nor a folder.")


def load_box_prompts(path: str | Path, images: list[Path], annotations: str | Path | None = None,
                     score_thresh: float = 0.0) -> dict[Path, np.ndarray]:
    """Detector boxes per image from a COCO-results JSON ([{image_id, bbox: XYWH, score}, ...]).

    Image ids come from ``annotations`` (its ``images[].file_name``) when given, otherwise from the
    file name's number (COCO names are the zero-padded id: 000000000139.jpg is image 139).
    """
    path = Path(path)
    try:
        dets = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read detections {path}: {e}") from None
    if not isinstance(dets, list) or any(not isinstance(d, dict) or not {"image_id", "bbox"} <= set(d) for d in dets):
        raise InputError(f"{path} must be a COCO results list of {{'image_id', 'bbox': [x, y, w, h], 'score'}}.")
    if annotations is not None:
        try:
            coco = json.loads(Path(annotations).read_text())
            ids = {Path(im["file_name"]).name: im["id"] for im in coco["images"]}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"cannot read image ids from {annotations}: {e}") from None
    else:
        ids = {}
        for im in images:
            if not im.stem.isdigit():
                raise InputError(f"cannot tell the image id of {im.name}: pass --annotations (a COCO JSON with "
                                 f"images[].file_name) or name images by their numeric id.")
            ids[im.name] = int(im.stem)
    by_id: dict[int, list[list[float]]] = {}
    for d in dets:
        if float(d.get("score", 1.0)) < score_thresh:
            continue
        x, y, w, h = (float(v) for v in d["bbox"])
        by_id.setdefault(d["image_id"], []).append([x, y, x + w, y + h])
    missing = [im.name for im in images if im.name not in ids]
    if missing:
        raise InputError(f"{len(missing)} image(s) are not in {annotations}: {', '.join(missing[:5])}.")
    return {im: np.array(by_id.get(ids[im.name], []), dtype=np.float64).reshape(-1, 4) for im in images}


def overlay_everything(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.55) -> Image.Image:
    """Each mask in its own colour, largest first so small objects stay visible."""
    canvas = image.astype(np.float32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for rank, i in enumerate(order):
        m = masks[i]
        canvas[m] = (1 - alpha) * canvas[m] + alpha * PALETTE[rank % len(PALETTE)]
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8))


def run_everything(
    generator: MaskGenerator,
    source: str | Path,
    out: str | Path,
    settings: dict,
    boxes: dict[Path, np.ndarray] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_image: Callable[[Path, int], None] | None = None,
) -> dict[str, int]:
    """Write ``<stem>.json`` (records with COCO-RLE masks) and ``<stem>.png`` (overlay) per image.

    Files are written atomically, the JSON last, so an image whose JSON exists is done: an
    interrupted run resumes where it stopped. ``settings`` are recorded in the folder and a re-run
    with other settings is refused (unless ``overwrite``), so one folder never mixes two configurations.
    """
    images = list_images(source)
    stems = [im.stem for im in images]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"images share a name stem ({', '.join(dupes[:5])}): outputs would overwrite each other.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_NAME
    if config_path.exists() and not overwrite:
        previous = json.loads(config_path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise InputError(f"{out} holds results made with other settings ({', '.join(changed)}); "
                             f"use another --out or --overwrite.")
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    done = skipped = 0
    todo = images
    if progress and len(images) > 1:
        from tqdm import tqdm

        todo = tqdm(images, desc="everything", unit="img")
    for im in todo:
        result = out / f"{im.stem}.json"
        if result.exists() and not overwrite:
            skipped += 1
            continue
        array = load_image(im)
        records = generator.generate(array, boxes=None if boxes is None else boxes[im])
        masks = [decode_rle(r["segmentation"]) for r in records]
        with atomic_path(out / f"{im.stem}.png") as tmp:
            overlay_everything(array, masks).save(tmp, format="PNG")
        payload = {
            "format": RESULT_FORMAT, "image": im.name, "height": array.shape[0], "width": array.shape[1],
            "stats": {k: v for k, v in vars(generator.stats).items()}, "annotations": records,
        }
        with atomic_path(result) as tmp:
            tmp.write_text(json.dumps(payload))
        done += 1
        if on_image is not None:
            on_image(im, len(records))
    return {"images": len(images), "done": done, "skipped": skipped}
