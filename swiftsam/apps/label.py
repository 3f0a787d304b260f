"""``swiftsam label``: prompts from another model (detections, a detector, person keypoints) -> COCO instance
masks. One prompt per object, all of an image's prompts in one batch through ``Predictor.predict_best`` (the one
prompt path); results are COCO results records with an RLE ``segmentation``, ``score`` = predicted IoU x the
detection's (or person's) score and ``bbox`` from the mask.

Resumable per image: each image's records are appended (and fsynced) to ``<out stem>.progress.jsonl`` beside
``--out`` after a config line; a run that stops resumes after the last complete line, and a run with other
settings is refused (``overwrite`` starts again). The results JSON is written (atomically) when every image is
done or skipped. Bad items are skipped and reported (``<out stem>.summary.json``): images that cannot be read,
boxes more than a pixel outside the image (within a pixel they are clipped), people without visible keypoints,
empty masks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, SwiftSamError
from ..everything.runner import BOX_TOLERANCE, fit_boxes
from ..image_io import MaxPixels, load_image
from ..masks import encode_mask, rle_bbox
from ..predictor import Predictor
from ..utils import FileLock, atomic_path
from .detections import Detections
from .keypoints import DEFAULT_PERSON_PROMPT, Person, PersonPrompt, person_prompts

LOG_FORMAT = "swiftsam-label/1"


@dataclass
class Prompts:
    """One image's prompts for ``predict_best``: boxes and / or points with labels, and per prompt the score and
    category of what it came from, plus what ``source`` records (e.g. the ground-truth annotation id)."""

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    category_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"what", "reason"}]
    clipped: int = 0

    def __len__(self) -> int:
        return len(self.scores)


def box_prompts(dets: Detections, hw: tuple[int, int], tolerance: float = BOX_TOLERANCE) -> Prompts:
    """Detections as box prompts: boxes within ``tolerance`` px of the image clipped to it, others skipped."""
    keep, boxes, clipped, skipped = [], [], 0, []
    for i, b in enumerate(dets.boxes):
        kept, c, dropped = fit_boxes(b[None], hw, tolerance)  # the everything runner's rule, one box at a time
        if dropped:
            skipped.append({"what": f"detection {i} box {dropped[0]['box']}", "reason": dropped[0]["reason"]})
            continue
        keep.append(i)
        boxes.append(kept[0])
        clipped += c
    sel = dets.select(np.array(keep, dtype=np.int64))
    return Prompts(boxes=np.array(boxes).reshape(-1, 4), scores=sel.scores, category_ids=sel.category_ids,
                   extra=[{} for _ in keep], skipped=skipped, clipped=clipped)


def keypoint_prompts(people: list[Person], hw: tuple[int, int], prompt: PersonPrompt = DEFAULT_PERSON_PROMPT,
                     part: str = "person") -> Prompts:
    """People as point (+ box) prompts (``keypoints.person_prompts``)."""
    kept, points, labels, boxes, skipped = person_prompts(people, hw, prompt, part)

    def name(i: int) -> str:
        src = people[i].source or {}
        return f"person {src['id']}" if "id" in src else f"person {i}"

    report = [{"what": name(s["person"]), "reason": s["reason"]} for s in skipped]
    extra = [{"ann_id": people[i].source["id"]} if people[i].source and "id" in people[i].source else {} for i in kept]
    return Prompts(boxes=boxes, points=points if kept and points is not None else None,
                   labels=labels if kept and labels is not None else None,
                   scores=np.array([people[i].score for i in kept]),
                   category_ids=np.array([people[i].category_id for i in kept], dtype=np.int64), extra=extra,
                   skipped=report)


def segment_prompts(predictor: Predictor, prompts: Prompts, image_id: int, candidates: str = "multimask"
                    ) -> tuple[list[dict], list[dict]]:
    """COCO results records of one image (already set on ``predictor``): (records, skipped empty masks)."""
    if not len(prompts):
        return [], []
    masks, ious = predictor.predict_best(prompts.points, prompts.labels, prompts.boxes, candidates=candidates)
    records, empty = [], []
    for k, (m, iou) in enumerate(zip(masks, ious)):
        if not m.any():
            empty.append({"what": f"prompt {k}", "reason": "the mask is empty"})
            continue
        rle = encode_mask(m)
        records.append({"image_id": image_id, "category_id": int(prompts.category_ids[k]), "segmentation": rle,
                        "bbox": rle_bbox(rle), "score": float(np.clip(iou, 0.0, 1.0) * prompts.scores[k]),
                        **prompts.extra[k]})
    return records, empty


# ------------------------------------------------------------------ the run
def label_one(predictor: Predictor, image: Path, image_id: int, prompts_for: Callable[[Path, np.ndarray], Prompts],
              candidates: str = "multimask", max_pixels: MaxPixels = "pil") -> dict:
    """One image's outcome, as its progress-log line: {image, records, skipped, clipped}, or {image, error} for an
    image that cannot be labelled (unreadable, bad prompts). Errors of the model, engine or installation, which
    every image would meet alike, are raised."""
    try:
        array = load_image(image, max_pixels=max_pixels)
        prompts = prompts_for(image, array)
        if len(prompts):
            predictor.set_image(array)
        records, empty = segment_prompts(predictor, prompts, image_id, candidates)
    except Exception as e:
        if isinstance(e, SwiftSamError) and not isinstance(e, InputError):
            raise  # the model, engine or installation: every image would fail alike
        return {"image": image.name, "error": str(e) if isinstance(e, SwiftSamError) else f"{type(e).__name__}: {e}"}
    for rec in records:
        rec["file_name"] = image.name
    return {"image": image.name, "records": records, "skipped": prompts.skipped + empty, "clipped": prompts.clipped}


def progress_path(out: Path) -> Path:
    return out.with_name(out.stem + ".progress.jsonl")


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def _read_log(path: Path) -> tuple[dict | None, dict[str, list[dict]], int]:
    """(config, records per finished image, byte length of the complete part) of a progress log."""
    config, done, good = None, {}, 0
    data = path.read_bytes()
    offset = 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break  # torn last line of a run killed mid-write
        try:
            rec = json.loads(raw)
        except ValueError:
            break
        offset += len(raw)
        good = offset
        if "config" in rec:
            config = rec["config"]
        elif "image" in rec:
            done[rec["image"]] = rec["records"]
    return config, done, good


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def label_images(
    predictor: Predictor,
    images: list[Path],
    ids: dict[str, int],
    prompts_for: Callable[[Path, np.ndarray], Prompts],
    out: str | os.PathLike[str],
    settings: dict,
    *,
    candidates: str = "multimask",
    overwrite: bool = False,
    progress: bool | None = None,
    strict: bool = False,
    max_pixels: MaxPixels = "pil",
    map_images: Callable[[list[Path]], Iterable[dict]] | None = None,
) -> dict:
    """Label ``images`` (ids: file name -> COCO image id) with the prompts ``prompts_for(path, pixels)`` gives,
    writing COCO results to ``out``. Returns the run's summary (also in ``<out stem>.summary.json``): images,
    done, resumed, results, ``failed`` [{image, error}], ``skipped`` [{image, what, reason}], ``clipped``.

    ``map_images(todo)``, when given, yields ``label_one``'s outcome for each image left to do, in any order
    (``apps.ray_batch``: on Ray actors); by default they are labelled here, one after the other with ``predictor``.
    The log, resuming, the report and the results file are the same either way."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: give the results file to write, e.g. {out / 'results.json'}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = progress_path(out)
    lock = FileLock(out.with_name(f".{out.name}.lock"))
    if not lock.acquire():
        raise InputError(f"{out} is being written by another run ({lock.holder()}); wait for it, or use another --out.")
    try:
        config = {"format": LOG_FORMAT, **settings}
        done: dict[str, list[dict]] = {}
        if log.exists() and overwrite:
            log.unlink()
        if log.exists():
            found, done, good = _read_log(log)
            if found is not None and found != config:
                changed = sorted(k for k in set(found) | set(config) if found.get(k) != config.get(k))
                raise InputError(f"{log} holds a run with other settings ({', '.join(changed)}); use another --out "
                                 f"or --overwrite.")
            with open(log, "r+b") as f:
                f.truncate(good)
            if found is None:
                done = {}
        if not log.exists() or log.stat().st_size == 0:
            _append(log, [{"config": config}])
        summary: dict = {"images": len(images), "done": 0, "resumed": 0, "results": 0, "failed": [], "skipped": [],
                         "clipped": 0}
        todo = [im for im in images if im.name not in done]
        summary["resumed"] = len(images) - len(todo)
        if map_images is None:
            outcomes = (label_one(predictor, im, ids[im.name], prompts_for, candidates, max_pixels) for im in todo)
        else:  # e.g. apps.ray_batch: the same label_one on Ray actors, outcomes as they finish
            outcomes = map_images(todo)
        if len(todo) > 1 and progress is not False:
            from tqdm.auto import tqdm

            outcomes = tqdm(outcomes, total=len(todo), desc="label", unit="img", file=sys.stderr,
                            disable=None if progress is None else False)
        paths = {im.name: im for im in todo}
        for outcome in outcomes:
            im = paths[outcome["image"]]
            if "error" in outcome:
                if strict:
                    raise InputError(f"{im}: {outcome['error']} (--strict stops at the first bad image; without it, "
                                     f"bad images are skipped and reported)")
                summary["failed"].append({"image": im.name, "error": outcome["error"]})
                continue
            records, problems = outcome["records"], outcome["skipped"]
            if problems and strict:
                raise InputError(f"{im}: {problems[0]['what']}: {problems[0]['reason']} (--strict)")
            _append(log, [outcome])
            done[im.name] = records
            summary["done"] += 1
            summary["skipped"] += [{"image": im.name, **p} for p in problems]
            summary["clipped"] += outcome["clipped"]
        results = [r for im in images if im.name in done for r in done[im.name]]
        summary["results"] = len(results)
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(results))
        with atomic_path(summary_path(out)) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        lock.release()


def settings_of(prompt: PersonPrompt | None = None, **kw) -> dict:
    """The settings a run records (and a resumed run must match)."""
    return {**kw, **({"person_prompt": asdict(prompt)} if prompt is not None else {})}
