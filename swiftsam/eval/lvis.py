"""``swiftsam eval lvis``: mask AP on LVIS-format annotations with LVIS's federated rules.

EfficientViT-SAM and TinySAM report LVIS AP with detector boxes as prompts. The ``lvis`` package's evaluator
(PyPI ``lvis`` 0.5.3) is not used: its ``__init__`` imports its plotting module (matplotlib, and OpenCV as the
non-headless ``opencv-python`` wheel, which clashes with ``opencv-python-headless``) and its ``accumulate``
calls ``np.float``, removed in NumPy 1.24, so it fails on the NumPy this project runs. The same rules are
applied here on top of pycocotools' ``COCOeval`` (already a dependency):

- an image is evaluated only for its *positive* categories (those annotated in it) and its *negative* ones
  (``neg_category_ids``, verified absent): detections of any other category on it are dropped;
- for the image's ``not_exhaustive_category_ids`` a detection that matches no annotation is ignored, not a
  false positive;
- at most 300 detections per image (the highest-scoring, over all categories);
- AP is the mean over categories with annotations (101-point interpolated, IoU 0.50:0.95), also per object
  size (COCO's area ranges) and per category frequency group (``APr`` rare, ``APc`` common, ``APf`` frequent).

Prompts are as ``eval coco``: ground-truth boxes (``box``; each mask scored with its predicted IoU) or a
detector's boxes (``detections``, a COCO/LVIS results JSON; scored with the detection score).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .dataset import CocoImages

FREQUENCIES = ("r", "c", "f")
MAX_DETS = 300
PROTOCOLS = ("box", "detections")
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


class LvisImages(CocoImages):
    """Images and annotations of an LVIS annotation file (v0.5 / v1): a COCO-format file whose images carry
    ``neg_category_ids`` / ``not_exhaustive_category_ids`` and whose categories carry ``frequency``. Images
    without ``file_name`` are found by the file name of their ``coco_url`` (LVIS v1)."""

    def _load(self, COCO, ann_path: Path):
        try:
            data = json.loads(ann_path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{ann_path} is not a readable JSON file ({e}).") from None
        check_lvis(data, ann_path)
        for a in data["annotations"]:
            a.setdefault("iscrowd", 0)  # LVIS has no crowd regions; COCOeval reads the field
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        self.negative = {im["id"]: set(im["neg_category_ids"]) for im in data["images"]}
        self.not_exhaustive = {im["id"]: set(im["not_exhaustive_category_ids"]) for im in data["images"]}
        self.frequency = {c["id"]: c["frequency"] for c in data["categories"]}
        return coco

    def file_name(self, image_id: int) -> str:
        info = self.coco.imgs[image_id]
        return info.get("file_name") or info["coco_url"].rsplit("/", 1)[-1]


def check_lvis(data, path: Path) -> None:
    """Clear errors for a file that is not LVIS-format (what is missing, where)."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise InputError(f"{path} is not an LVIS annotation file: it needs 'images', 'annotations' and 'categories' "
                         f"lists.")
    for im in data["images"]:
        missing = [k for k in ("id", "height", "width", "neg_category_ids", "not_exhaustive_category_ids")
                   if k not in im]
        if not im.get("file_name") and not im.get("coco_url"):
            missing.append("file_name or coco_url")
        if missing:
            hint = (" (a COCO file? LVIS images list the categories verified absent and those not exhaustively "
                    "annotated; use `swiftsam eval coco` for COCO files)") if "neg_category_ids" in missing else ""
            raise InputError(f"image {im.get('id', '?')} in {path} lacks {', '.join(missing)}{hint}.")
    for c in data["categories"]:
        if c.get("frequency") not in FREQUENCIES:
            raise InputError(f"category {c.get('id', '?')} ({c.get('name', '?')}) in {path} has frequency "
                             f"{c.get('frequency')!r}; LVIS categories have 'r', 'c' or 'f'.")
    for a in data["annotations"]:
        missing = [k for k in ("id", "image_id", "category_id", "bbox", "segmentation", "area") if k not in a]
        if missing:
            raise InputError(f"annotation {a.get('id', '?')} in {path} lacks {', '.join(missing)}.")


def gt_box_detections(dataset: LvisImages) -> dict[int, list[dict]]:
    """The ``box`` protocol's prompts: every annotation's box, score 1 (the mask's predicted IoU ranks them)."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for i in dataset.image_ids:
        for a in dataset.annotations(i):
            by_image[i].append({"image_id": i, "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0})
    return by_image


def federated_results(rows: list[dict], dataset: LvisImages, image_ids: list[int]) -> list[dict]:
    """The results LVIS scores: per image only its positive and negative categories, the top ``MAX_DETS``."""
    evaluated = {i: {a["category_id"] for a in dataset.annotations(i)} | dataset.negative.get(i, set())
                 for i in image_ids}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        i = r["image_id"]
        if r["category_id"] in evaluated.get(i, ()):
            by_image[i].append(r)
    kept = []
    for i, rs in by_image.items():
        kept += sorted(rs, key=lambda r: -r["score"])[:MAX_DETS]
    return kept


def lvis_segm_ap(rows: list[dict], dataset: LvisImages, image_ids: list[int]) -> dict[str, float]:
    """Mask AP over ``image_ids`` with LVIS's federated rules (module docstring); -1 where no category counts."""
    from pycocotools.cocoeval import COCOeval

    class FederatedEval(COCOeval):
        def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802 (pycocotools' name)
            res = super().evaluateImg(imgId, catId, aRng, maxDet)
            if res is not None and catId in dataset.not_exhaustive.get(imgId, ()):
                # unmatched detections of a category not exhaustively annotated here are ignored
                res["dtIgnore"] = np.logical_or(res["dtIgnore"], res["dtMatches"] == 0)
            return res

    results = federated_results(rows, dataset, image_ids)
    if not results:
        return {n: 0.0 for n in AP_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = dataset.coco.loadRes([{k: r[k] for k in ("image_id", "category_id", "score", "segmentation")}
                                   for r in results])
        ev = FederatedEval(dataset.coco, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.maxDets = [MAX_DETS]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # T x R x K x A x M
    iou_thrs = ev.params.iouThrs

    def mean(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else -1.0

    out = {
        "AP": mean(precision[:, :, :, 0, -1]),
        "AP50": mean(precision[np.isclose(iou_thrs, 0.5), :, :, 0, -1]),
        "AP75": mean(precision[np.isclose(iou_thrs, 0.75), :, :, 0, -1]),
        "APs": mean(precision[:, :, :, 1, -1]),
        "APm": mean(precision[:, :, :, 2, -1]),
        "APl": mean(precision[:, :, :, 3, -1]),
    }
    for f in FREQUENCIES:
        k = [j for j, c in enumerate(ev.params.catIds) if dataset.frequency.get(c) == f]
        out[f"AP{f}"] = mean(precision[:, :, k, 0, -1]) if k else -1.0
    return out


def summarize_lvis(rows: list[dict], dataset: LvisImages, config: dict, image_ids: list[int]) -> dict:
    return {"config": config, "images": config["images"], "rows": len(rows),
            "segm": lvis_segm_ap(rows, dataset, image_ids)}


def format_lvis_summary(summary: dict) -> str:
    cfg = summary["config"]
    head = f"{cfg['model']} | lvis {cfg['prompts']} | {summary['images']} images, {summary['rows']} results"
    return head + "\n" + "  ".join(f"{k} {v:.4f}" for k, v in summary["segm"].items())


def evaluate_lvis(dataset: LvisImages, segmenter, out_dir: str | os.PathLike[str], protocol: str = "box", *,
                  detections: dict[int, list[dict]] | None = None, settings: dict | None = None,
                  **options) -> dict | None:
    """``eval coco``'s driver (resumable, sharded) with LVIS prompts and LVIS AP; ``options`` go to
    ``evaluate_coco`` (limit, model_name, overwrite, progress, max_pixels)."""
    from .coco import evaluate_coco

    if protocol not in PROTOCOLS:
        raise InputError(f"the lvis protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    if protocol == "detections" and detections is None:
        raise InputError("the detections protocol needs --detections FILE (LVIS/COCO results JSON of a detector).")
    if protocol == "box":
        detections = gt_box_detections(dataset)
    settings = {**(settings or {}), "benchmark": "lvis", "prompts": "gt-boxes" if protocol == "box" else "detections"}
    return evaluate_coco(dataset, segmenter, out_dir, "detections", detections=detections, settings=settings,
                         mask_scores=protocol == "box", summarizer=summarize_lvis, **options)
