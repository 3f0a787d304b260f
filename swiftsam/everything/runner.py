"""Everything mode over an image or a folder: COCO-RLE JSON + overlay PNG per image, resumable, robust to
bad images and boxes, and shareable by several runs (per-image locks)."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError, SwiftSamError
from ..image_io import MaxPixels, list_images, load_image
from ..masks import decode_rle
from ..utils import FileLock, atomic_path, remove_stale_parts
from ..visualize import PALETTE
from .generator import MaskGenerator, NoMasksWarning

RESULT_FORMAT = "swiftsam-everything/1"
CONFIG_NAME = "everything.config.json"
SUMMARY_NAME = "everything.summary.json"  # the last run's report: counts, failed images, dropped boxes
SUMMARY_FORMAT = "swiftsam-everything-run/1"
BOX_TOLERANCE = 1.0  # px: detector boxes this far outside the image are clipped, further out dropped
STALE_PART_S = 60.0  # a temporary (atomic_path's .part) this old was left by a killed run: writes take moments


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


def fit_boxes(boxes: np.ndarray, hw: tuple[int, int], tolerance: float = BOX_TOLERANCE
              ) -> tuple[np.ndarray, int, list[dict]]:
    """Detector boxes (N x 4, XYXY) made valid prompts for an H x W image: a box at most ``tolerance`` pixels
    outside the image is clipped to it (detectors round past the border); a box further out, flipped or not
    finite is dropped. Returns (boxes kept, how many were clipped, [{"box", "reason"}] of those dropped)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = hw
    lo, hi = np.zeros(4), np.array([w, h, w, h], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        outside = np.maximum(lo - b, b - hi).max(axis=1) if len(b) else np.zeros(0)  # px beyond the image
        finite = np.isfinite(b).all(axis=1)
        flipped = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    dropped = []
    for i in range(len(b)):
        if not finite[i]:
            reason = "not finite"
        elif flipped[i]:
            reason = "x1 < x0 or y1 < y0"
        elif outside[i] > tolerance:
            reason = f"{outside[i]:.2f} px outside the {w}x{h} image (more than {tolerance:g} px: not clipped)"
        else:
            continue
        dropped.append({"box": b[i].tolist(), "reason": reason})
    keep = finite & ~flipped & (outside <= tolerance)
    return np.clip(b[keep], lo, hi), int((outside[keep] > 0).sum()), dropped


def result_problem(result: Path, overlay: Path, image_name: str) -> str | None:
    """None when ``result`` is a complete result for ``image_name`` (with its overlay); else what is wrong
    with it. A result left by hand or by another program is not taken as done."""
    if not result.exists():
        return "missing"
    try:
        payload = json.loads(result.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable ({type(e).__name__})"
    if not isinstance(payload, dict) or payload.get("format") != RESULT_FORMAT:
        return f"not a {RESULT_FORMAT} result"
    if payload.get("image") != image_name:
        return f"made for image {payload.get('image')!r}"
    if not isinstance(payload.get("annotations"), list):
        return "no annotations list"
    if not overlay.is_file():
        return "its overlay PNG is missing"
    return None


def _read_settings(path: Path) -> dict:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} ({type(e).__name__}): it records the settings of the results in "
                         f"{path.parent}; remove it, or use another --out or --overwrite.") from None
    if not isinstance(previous, dict):
        raise InputError(f"{path} is not a settings file; remove it, or use another --out or --overwrite.")
    return previous


def run_everything(
    generator: MaskGenerator,
    source: str | Path,
    out: str | Path,
    settings: dict,
    boxes: dict[Path, np.ndarray] | None = None,
    overwrite: bool = False,
    progress: bool | None = True,
    on_image: Callable[[Path, int], None] | None = None,
    strict: bool = False,
    max_pixels: MaxPixels = "pil",
) -> dict:
    """Write ``<stem>.json`` (records with COCO-RLE masks) and ``<stem>.png`` (overlay) per image.

    Files are written atomically, the JSON last, so an image whose JSON is a complete result (its format,
    its image name, and the overlay beside it: ``result_problem``) is done: an interrupted run resumes where
    it stopped, and an invalid result is done again. ``settings`` are recorded in the folder and a re-run
    with other settings is refused (unless ``overwrite``), so one folder never mixes two configurations.

    Robust to bad items and to company: an image that cannot be read or segmented is skipped and reported
    (``strict``: stop at the first, naming it); detector boxes at most a pixel outside the image are clipped,
    others dropped and reported; each image is locked while it is worked on (``.<stem>.lock``), so runs
    sharing ``out`` share the work; temporaries that a killed run left are removed. Returns the run's summary
    (also written to ``out/everything.summary.json``): counts, ``failed`` [{image, error}], ``empty`` [{image,
    reason}] (no mask kept), ``busy`` (images another run was working on), ``redone`` [{image, reason}]
    (invalid results done again), ``boxes_clipped``, ``boxes_dropped`` [{image, box, reason}].
    """
    images = list_images(source)
    stems = [im.stem for im in images]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"images share a name stem ({', '.join(dupes[:5])}): outputs would overwrite each other.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_NAME
    remove_stale_parts(out, older_than_s=STALE_PART_S)  # left by a killed run (a live writer's are fresh)
    if config_path.exists() and not overwrite:
        previous = _read_settings(config_path)
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise InputError(f"{out} holds results made with other settings ({', '.join(changed)}); "
                             f"use another --out or --overwrite.")
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    summary: dict = {"format": SUMMARY_FORMAT, "images": len(images), "done": 0, "skipped": 0, "failed": [],
                     "empty": [], "busy": [], "redone": [], "boxes_clipped": 0, "boxes_dropped": []}
    todo = images
    if len(images) > 1 and progress is not False:
        from tqdm.auto import tqdm

        todo = tqdm(images, desc="everything", unit="img", file=sys.stderr, disable=None if progress is None else False)
    for im in todo:
        result, overlay_path = out / f"{im.stem}.json", out / f"{im.stem}.png"
        if not overwrite and result_problem(result, overlay_path, im.name) is None:
            summary["skipped"] += 1
            continue
        lock = FileLock(out / f".{im.stem}.lock")
        if not lock.acquire():
            summary["busy"].append({"image": im.name, "by": lock.holder()})
            continue
        try:
            problem = result_problem(result, overlay_path, im.name)
            if problem is None and not overwrite:  # another run finished it since we looked
                summary["skipped"] += 1
                continue
            if problem not in (None, "missing"):
                summary["redone"].append({"image": im.name, "reason": problem})
            remove_stale_parts(out, [result.name, overlay_path.name])  # ours alone: we hold the image's lock
            try:
                array, records, box_report = _segment(generator, im, None if boxes is None else boxes[im], strict,
                                                      max_pixels)
            except Exception as e:
                if isinstance(e, SwiftSamError) and not isinstance(e, InputError):
                    raise  # the model, engine or installation, not this image: every image would fail alike
                reason = str(e) if isinstance(e, SwiftSamError) else f"{type(e).__name__}: {e}"
                if strict:
                    kind = InputError if isinstance(e, (InputError, OSError)) else SwiftSamError
                    raise kind(f"{im}: {reason} (--strict stops at the first failed image; without it, failed "
                               f"images are skipped and listed in {out / SUMMARY_NAME})") from e
                summary["failed"].append({"image": im.name, "error": reason})
                continue
            summary["boxes_clipped"] += box_report.get("boxes_clipped", 0)
            summary["boxes_dropped"] += [{"image": im.name, **d} for d in box_report.get("boxes_dropped", [])]
            if not records and generator.stats.masks_decoded:
                summary["empty"].append({"image": im.name, "reason": generator.no_masks_message()})
            masks = [decode_rle(r["segmentation"]) for r in records]
            with atomic_path(overlay_path) as tmp:
                overlay_everything(array, masks).save(tmp, format="PNG")
            payload = {
                "format": RESULT_FORMAT, "image": im.name, "height": array.shape[0], "width": array.shape[1],
                "stats": {k: v for k, v in vars(generator.stats).items()}, **box_report, "annotations": records,
            }
            with atomic_path(result) as tmp:
                tmp.write_text(json.dumps(payload))
            summary["done"] += 1
            if on_image is not None:
                on_image(im, len(records))
        finally:
            lock.release()
    with atomic_path(out / SUMMARY_NAME) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def _segment(generator: MaskGenerator, image: Path, boxes: np.ndarray | None, strict: bool,
             max_pixels: MaxPixels = "pil") -> tuple[np.ndarray, list[dict], dict]:
    """Read and segment one image: (pixels, records, what happened to its detector boxes)."""
    array = load_image(image, max_pixels=max_pixels)
    report = {}
    if boxes is not None:
        boxes, clipped, dropped = fit_boxes(boxes, array.shape[:2])
        if dropped and strict:
            raise InputError(f"detector box {dropped[0]['box']}: {dropped[0]['reason']}")
        report = {"boxes_clipped": clipped, "boxes_dropped": dropped}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoMasksWarning)  # reported in the run summary instead
        records = generator.generate(array, boxes=boxes)
    return array, records, report
