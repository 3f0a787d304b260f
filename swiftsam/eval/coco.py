"""``swiftsam eval coco``: the box, point and detections protocols, resumable and sharded.

Results stream to ``OUT/results.rank<R>.jsonl``: a config line, then per image its rows followed by a
``{"done": image_id, "rows": n}`` marker, written in one write and fsynced. A run that is stopped at any
moment resumes where it stopped: images without a marker (or with a torn last line) are done again.
Under ``torchrun`` every rank takes every WORLD_SIZE-th image and rank 0 merges all result files into
``OUT/summary.json``; with one process the same code runs without torch.distributed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..image_io import MaxPixels
from ..utils import FileLock, atomic_path, remove_stale_parts
from .clicker import Clicker
from .dataset import CocoImages
from .metrics import mask_iou, miou_table

PROTOCOLS = ("box", "point", "detections")
# box variants: which outputs compete and which annotations count (see docs/EVALUATION.md)
BOX_VARIANTS = {
    "nanosam": {"candidates": "all", "min_area": None},  # NanoSAM tools/eval_coco.py
    "efficientvit": {"candidates": "multimask", "min_area": 1.0},  # EfficientViT-SAM eval (box)
}
# point variants: what the model gets and which outputs compete after the first click (docs/EVALUATION.md).
# The first click is the same in both: no mask input, the best of the 3 multimask outputs.
POINT_VARIANTS = {
    # SAM's iterative prompting (SAM paper, App. A "Training algorithm"; how SAM-family decoders are trained):
    # all clicks + the previous chosen low-res logits as mask input, the single-mask output
    "sam": {"later": "single", "mask_input": True},
    # EfficientViT-SAM eval_efficientvit_sam_model.py --prompt_type point: all clicks, no mask input, best of 3
    "efficientvit": {"later": "multimask", "mask_input": False},
}
DEFAULT_VARIANT = {"box": "nanosam", "point": "sam"}
SUMMARY = "summary.json"


def xywh_to_xyxy(b, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    x, y, bw, bh = (float(v) for v in b)
    return np.array([min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)])


# ------------------------------------------------------------------ protocols (one image -> rows)
def box_rows(dataset: CocoImages, segmenter, image_id: int, variant: str) -> list[dict]:
    rule = BOX_VARIANTS[variant]
    anns = [a for a in dataset.annotations(image_id) if rule["min_area"] is None or a["area"] >= rule["min_area"]]
    if not anns:
        return []
    size = dataset.size(image_id)
    boxes = np.stack([xywh_to_xyxy(a["bbox"], size) for a in anns])
    masks, scores = segmenter.boxes(boxes, rule["candidates"])
    return [
        {"image_id": image_id, "ann_id": a["id"], "category_id": a["category_id"], "area": float(a["area"]),
         "iscrowd": int(a.get("iscrowd", 0)), "iou": mask_iou(m, dataset.gt_mask(a)), "score": float(s)}
        for a, m, s in zip(anns, masks, scores)
    ]


def point_rows(dataset: CocoImages, segmenter, image_id: int, clicks: int, variant: str = "sam") -> list[dict]:
    rule = POINT_VARIANTS[variant]
    anns = [a for a in dataset.annotations(image_id) if a["area"] >= 1.0]  # as EfficientViT-SAM's point eval
    if not anns:
        return []
    gts = [dataset.gt_mask(a) for a in anns]
    clickers = [Clicker(gt) for gt in gts]
    predicted = [np.zeros_like(gt) for gt in gts]
    ious: list[list[float]] = [[] for _ in anns]
    logits = None  # the chosen outputs' low-res logits, from segmenters that return them
    for k in range(clicks):  # every annotation's k-th click in one batch, then re-predict with all clicks
        for c, p in zip(clickers, predicted):
            c.next_click(p)
        points = np.array([c.points for c in clickers], dtype=np.float64)
        labels = np.array([c.labels for c in clickers])
        extra = {"mask_input": logits} if k > 0 and rule["mask_input"] and logits is not None else {}
        answer = segmenter.clicks(points, labels, "multimask" if k == 0 else rule["later"], **extra)
        masks, logits = answer[0], (answer[2] if len(answer) > 2 else None)
        predicted = list(masks)
        for j, (m, gt) in enumerate(zip(masks, gts)):
            ious[j].append(mask_iou(m, gt))
    return [
        {"image_id": image_id, "ann_id": a["id"], "category_id": a["category_id"], "area": float(a["area"]),
         "iou": v[-1], "ious": v, "clicks": [[*p, lab] for p, lab in zip(c.points, c.labels)]}
        for a, v, c in zip(anns, ious, clickers)
    ]


def detection_rows(dataset: CocoImages, segmenter, image_id: int, detections: list[dict],
                   mask_scores: bool = False) -> list[dict]:
    """One mask per detection box, scored with the detection's score (``mask_scores``: times the mask's predicted
    IoU, which ranks the masks of boxes that all score 1, e.g. ground-truth boxes)."""
    if not detections:
        return []
    size = dataset.size(image_id)
    boxes = np.stack([xywh_to_xyxy(d["bbox"], size) for d in detections])
    masks, predicted = segmenter.boxes(boxes, "multimask")  # EfficientViT-SAM / TinySAM: best of the 3 outputs
    return [
        {"image_id": image_id, "category_id": d["category_id"],
         "score": float(d["score"]) * (float(p) if mask_scores else 1.0),
         "bbox": [float(v) for v in d["bbox"]], "segmentation": dataset.encode(m)}
        for d, m, p in zip(detections, masks, predicted)
    ]


def load_detections(path: str | os.PathLike[str], dataset: CocoImages) -> dict[int, list[dict]]:
    """A COCO results JSON (list of {image_id, category_id, bbox, score}) grouped by image."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"detections file not found: {p}")
    try:
        dets = json.loads(p.read_text())
    except ValueError as e:
        raise InputError(f"{p} is not JSON ({e}).") from None
    if not isinstance(dets, list) or not all(isinstance(d, dict) for d in dets):
        raise InputError(f"{p} must be a COCO results list: [{{image_id, category_id, bbox, score}}, ...].")
    for i, d in enumerate(dets):
        missing = {"image_id", "category_id", "bbox", "score"} - set(d)
        if missing:
            raise InputError(f"detection {i} in {p} lacks {', '.join(sorted(missing))}.")
    known = set(dataset.image_ids)
    unknown = sorted({d["image_id"] for d in dets} - known)
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise InputError(f"{p} has detections for {len(unknown)} image ids not in the annotation file: {shown}")
    by_image: dict[int, list[dict]] = defaultdict(list)
    for d in dets:
        by_image[d["image_id"]].append(d)
    return by_image


# ------------------------------------------------------------------ results log
def _read_log(path: Path) -> tuple[dict | None, dict[int, list[dict]], int]:
    """(config, rows of completed images, byte length of the complete part)."""
    config, pending, done, good = None, defaultdict(list), {}, 0
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    for raw in data.splitlines(keepends=True):
        offset += len(raw)
        if not raw.endswith(b"\n"):
            break  # torn last line of a run that was killed mid-write
        try:
            rec = json.loads(raw)
        except ValueError:
            break
        if "config" in rec:
            config = rec["config"]
        elif "done" in rec:
            rows = pending.pop(rec["done"], [])
            if len(rows) == rec["rows"]:
                done[rec["done"]] = rows
        else:
            pending[rec["image_id"]].append(rec)
        if not pending:
            good = offset
    return config, done, good


class ResultsLog:
    def __init__(self, out_dir: Path, rank: int, config: dict) -> None:
        self.out_dir = out_dir
        self.path = out_dir / f"results.rank{rank}.jsonl"
        self.config = config
        out_dir.mkdir(parents=True, exist_ok=True)
        logs = sorted(out_dir.glob("results.rank*.jsonl"))
        for log in logs:
            found, _, _ = _read_log(log)
            if found is not None and found != config:
                diff = {k: (found.get(k), config.get(k)) for k in set(found) | set(config) if found.get(k) != config.get(k)}
                raise InputError(
                    f"{log} holds results of a different evaluation ({diff}: before vs now); "
                    "use another --out, or --overwrite to start again."
                )
        if self.path.exists():  # drop the incomplete tail of an interrupted run
            _, _, good = _read_log(self.path)
            with open(self.path, "r+b") as f:
                f.truncate(good)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write([{"config": config}])

    def completed(self) -> dict[int, list[dict]]:
        """Rows of every completed image, across all ranks' files."""
        rows: dict[int, list[dict]] = {}
        for log in sorted(self.out_dir.glob("results.rank*.jsonl")):
            rows.update(_read_log(log)[1])
        return rows

    def add(self, image_id: int, rows: list[dict]) -> None:
        self._write([*rows, {"done": image_id, "rows": len(rows)}])

    def _write(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------ summary
def summarize(protocol: str, rows: list[dict], dataset: CocoImages, config: dict, image_ids: list[int]) -> dict:
    summary = {"config": config, "images": config["images"], "rows": len(rows)}
    if protocol == "box":
        summary["miou"] = miou_table(rows)
    elif protocol == "point":
        summary["miou_per_click"] = {
            str(k + 1): miou_table([{**r, "iou_k": r["ious"][k]} for r in rows], key="iou_k")
            for k in range(config["clicks"])
        }
    else:
        summary["segm"] = coco_segm_ap(rows, dataset, image_ids)
    return summary


def coco_segm_ap(rows: list[dict], dataset: CocoImages, image_ids: list[int]) -> dict[str, float]:
    """COCOeval ``segm`` AP over ``image_ids`` (pycocotools), as the TinySAM / EfficientViT-SAM tables."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    if not rows:
        return {n: 0.0 for n in names}
    with contextlib.redirect_stdout(io.StringIO()):
        results = dataset.coco.loadRes([{k: r[k] for k in ("image_id", "category_id", "score", "segmentation")}
                                        for r in rows])
        ev = COCOeval(dataset.coco, results, "segm")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {n: float(v) for n, v in zip(names, ev.stats[:6])}


def format_summary(summary: dict) -> str:
    cfg = summary["config"]
    head = f"{cfg['model']} | coco {cfg['protocol']}" + (f" ({cfg['variant']})" if cfg.get("variant") else "")
    lines = [head + f" | {summary['images']} images, {summary['rows']} results"]
    if "miou" in summary or "miou_per_click" in summary:
        tables = {"": summary["miou"]} if "miou" in summary else {
            f"{k} click{'s' if k != '1' else ''}": t for k, t in summary["miou_per_click"].items()}
        lines.append(f"{'':10s} {'all':>14s} {'small':>14s} {'medium':>14s} {'large':>14s}")
        for label, t in tables.items():
            cells = [f"{t[b]['miou']:.4f} ({t[b]['count']})" for b in ("all", "small", "medium", "large")]
            lines.append(f"{label or 'mIoU':10s} " + " ".join(f"{c:>14s}" for c in cells))
    else:
        lines.append("  ".join(f"{k} {v:.4f}" for k, v in summary["segm"].items()))
    return "\n".join(lines)


# ------------------------------------------------------------------ driver
def distributed_context() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier): torch.distributed over gloo under torchrun, trivial otherwise."""
    from ..runtime import init_torchrun

    d = init_torchrun("gloo")
    if not d.active:
        return 0, 1, lambda: None
    import torch.distributed as dist

    return d.rank, d.world, dist.barrier


def evaluate_coco(
    dataset: CocoImages,
    segmenter,
    out_dir: str | os.PathLike[str],
    protocol: str = "box",
    *,
    variant: str | None = None,
    clicks: int = 1,
    detections: dict[int, list[dict]] | None = None,
    limit: int | None = None,
    model_name: str | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: MaxPixels = "pil",
    mask_scores: bool = False,
    summarizer: Callable[[list[dict], CocoImages, dict, list[int]], dict] | None = None,
) -> dict | None:
    """Run ``protocol`` over the dataset (or its first ``limit`` images); returns the summary on rank 0.

    ``settings`` (checkpoint, engine, ...) join the run's config: a resumed run must have the same.
    ``mask_scores`` (detections protocol): scores are the detection's times the mask's predicted IoU.
    ``summarizer(rows, dataset, config, image_ids)`` replaces the protocol's summary (``eval lvis``: LVIS AP).
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    variant = variant or DEFAULT_VARIANT.get(protocol)
    for name, known in (("box", BOX_VARIANTS), ("point", POINT_VARIANTS)):
        if protocol == name and variant not in known:
            raise InputError(f"the {name} protocol's --variant must be one of {', '.join(known)}, got {variant!r}.")
    if protocol == "point" and clicks < 1:
        raise InputError(f"--clicks must be >= 1, got {clicks}.")
    if protocol == "detections" and detections is None:
        raise InputError("the detections protocol needs --detections FILE (COCO results JSON of a detector).")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}.")
    image_ids = dataset.image_ids[:limit] if limit else list(dataset.image_ids)
    config = {"protocol": protocol, "model": model_name or getattr(segmenter, "name", "model"),
              "images": len(image_ids), "variant": variant if protocol in DEFAULT_VARIANT else None,
              "clicks": clicks if protocol == "point" else None, **(settings or {})}
    out = Path(out_dir)
    rank, world, barrier = distributed_context()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / f".results.rank{rank}.lock")  # a second run into this --out would redo all the work
    if not lock.acquire():
        raise InputError(f"{out} is being evaluated by another run ({lock.holder()}); wait for it to finish, "
                         f"or use another --out.")
    try:
        remove_stale_parts(out, [SUMMARY], older_than_s=60)  # left by a run killed while writing it
        if overwrite and rank == 0:
            for old in [*out.glob("results.rank*.jsonl"), out / SUMMARY]:
                old.unlink(missing_ok=True)
        barrier()
        log = ResultsLog(out, rank, config)
        barrier()
        done = log.completed()
        mine = [i for i in image_ids[rank::world] if i not in done]
        for image_id in tqdm(mine, desc=f"eval {protocol}" + (f" [rank {rank}]" if world > 1 else ""),
                             disable=not progress or rank != 0, unit="img"):
            segmenter.set_image(dataset.image(image_id, max_pixels=max_pixels), image_id)
            if protocol == "box":
                rows = box_rows(dataset, segmenter, image_id, variant)
            elif protocol == "point":
                rows = point_rows(dataset, segmenter, image_id, clicks, variant)
            else:
                rows = detection_rows(dataset, segmenter, image_id, detections.get(image_id, []), mask_scores)
            log.add(image_id, rows)
        barrier()
    finally:
        lock.release()
    if rank != 0:
        return None
    done = log.completed()
    missing = [i for i in image_ids if i not in done]
    if missing:
        raise InputError(f"{len(missing)} images have no results in {out} (a rank stopped early?); run again to finish.")
    rows = [r for i in image_ids for r in done[i]]
    summary = (summarizer or (lambda *a: summarize(protocol, *a)))(rows, dataset, config, image_ids)
    with atomic_path(out / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
