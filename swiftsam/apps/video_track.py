"""Tracking objects through a video: prompts (one home for their syntax and checks), the two trackers, and the
outputs of ``swiftsam track`` and the server's ``/v1/track``.

**Prompts.** Each is a box, a click or a mask on a frame for an object: ``Prompt``. The text form (the command
line's ``--box`` / ``--point`` / ``--mask`` values, and strings in ``/v1/track``'s ``prompts``) is
``VALUE[@FRAME][#OBJ]``: ``x0,y0,x1,y1``, ``x,y[,label]`` (1 foreground, the default; 0 background) or a mask
file (non-zero = object), on frame ``FRAME`` (default 0) for object ``OBJ`` (default 1; 1..255, its value in the
label PNGs). Clicks of one object on one frame go together (with its box, if any); a mask stands alone.

**Trackers.** A model with SAM 2's memory (``contract.object_score``) tracks with ``video.VideoPredictor``:
the prompts of the first prompted frame start it; a prompt on a later frame is added when tracking reaches that
frame (a correction click: with the memory and the mask tracked there), then tracking goes on from it. Image-only
models use ``apps.tracker.MultiTracker`` (each frame prompted from the previous result; a prompt on a later
frame starts that object again there). An object appears from its first prompt's frame on; overlapping objects
are made disjoint (SAM 2: the highest logit wins a pixel; image models: the highest predicted IoU).

**Outputs** (``TrackWriter``): ``OUT/00000.png`` ... label images (0 background; one object: 255, as DAVIS 2016
and as ``swiftsam track`` always wrote; several: the object's id), ``OUT/track.json`` (per frame and object: COCO
RLE, score, box, area, lost), ``OUT/overlay.mp4`` (OpenCV, the ``eval`` extra), and ``OUT/track.jsonl``, the
per-frame log a killed run resumes from: frames already written are not tracked again; tracking restarts from
each object's last written mask (a mask prompt on that frame), so frames after a resume can differ slightly from
an unbroken run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..image_io import list_images, load_image
from ..masks import decode_rle, encode_mask
from ..prompts import check_boxes, check_points
from ..utils import atomic_path, remove_stale_parts
from ..video import VideoPredictor
from ..video.frames import FrameSource, VideoFile
from .tracker import Frame, mask_box

MAX_OBJECT_ID = 255  # object ids are the label PNGs' values (8-bit)
PROMPT_KINDS = {"box": "x0,y0,x1,y1", "point": "x,y[,label]", "mask": "PATH"}


def is_video_model(model) -> bool:
    """Whether ``model`` tracks with a memory of its own (SAM 2.1), rather than frame by frame."""
    return bool(getattr(model, "contract", None) is not None and model.contract.object_score
                and hasattr(model, "memory_attention"))


# ---------------------------------------------------------------------------------------------- prompts
@dataclass(eq=False)
class Prompt:
    """One prompt: ``kind`` box / point / mask on ``frame`` for object ``obj``. ``box``: x0, y0, x1, y1;
    ``point``: x, y, label; ``mask``: H x W bool. ``source``: how it was given (for messages)."""

    kind: str
    frame: int = 0
    obj: int = 1
    box: tuple[float, ...] | None = None
    point: tuple[float, float, int] | None = None
    mask: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or f"the {self.kind} prompt"
        if self.kind not in PROMPT_KINDS:
            raise InputError(f"{where}: unknown prompt kind {self.kind!r}; the kinds are {', '.join(PROMPT_KINDS)}.")
        for name, value, lo, hi in (("frame", self.frame, 0, None), ("object id", self.obj, 1, MAX_OBJECT_ID)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
                    hi is not None and value > hi):
                rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise InputError(f"{where}: the {name} must be an integer {rng}, got {value!r}.")
        self.frame, self.obj = int(self.frame), int(self.obj)
        given = {"box": self.box, "point": self.point, "mask": self.mask}
        if given[self.kind] is None or any(v is not None for k, v in given.items() if k != self.kind):
            raise InputError(f"{where}: a {self.kind} prompt holds a {self.kind} and nothing else.")
        if self.kind == "box":
            b = _finite(self.box, (4,), where, "x0,y0,x1,y1")
            if b[2] < b[0] or b[3] < b[1]:
                raise InputError(f"{where}: a box is x0,y0,x1,y1 with x0 <= x1 and y0 <= y1, got {b.tolist()}.")
            self.box = tuple(float(v) for v in b)
        elif self.kind == "point":
            p = _finite(self.point, (2, 3), where, "x,y[,label]")
            if len(p) == 3 and p[2] not in (0, 1):
                raise InputError(f"{where}: a point's label is 1 (foreground) or 0 (background), got {p[2]:g}.")
            self.point = (float(p[0]), float(p[1]), int(p[2]) if len(p) == 3 else 1)
        else:
            m = np.asarray(self.mask)
            if m.ndim != 2 or min(m.shape) < 1:
                raise InputError(f"{where}: a mask must be a 2-D H x W image, got shape {m.shape}.")
            self.mask = m.astype(bool)

    def describe(self) -> dict:
        """What identifies the prompt (a resumed run checks it is the same)."""
        if self.kind == "mask":
            value = {"mask_sha256": hashlib.sha256(np.packbits(self.mask).tobytes()).hexdigest(),
                     "mask_size": list(self.mask.shape)}
        else:
            value = {self.kind: list(getattr(self, self.kind))}
        return {"kind": self.kind, "frame": self.frame, "obj": self.obj, **value}


def _finite(values, counts: tuple[int, ...], where: str, form: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected {form} (numbers), got {values!r}.") from None
    if len(a) not in counts or not np.isfinite(a).all():
        raise InputError(f"{where}: expected {form}: {' or '.join(map(str, counts))} finite numbers, got "
                         f"{values!r}.")
    return a


def parse_prompt(kind: str, text: str, where: str | None = None,
                 load_mask: Callable[[str], np.ndarray] | None = None, default_frame: int = 0) -> Prompt:
    """A prompt from its text form ``VALUE[@FRAME][#OBJ]`` (see the module's doc). ``where`` names it in
    messages (e.g. ``--box '1,2,3'``); ``load_mask(path)`` reads a mask's VALUE (e.g. ``load_mask_file``); None
    refuses mask prompts. ``default_frame``: the frame of a prompt without ``@FRAME``."""
    if kind not in PROMPT_KINDS:
        raise InputError(f"unknown prompt kind {kind!r}: the kinds are {', '.join(PROMPT_KINDS)} (e.g. 'box "
                         f"10,20,200,180@0#1').")
    where = where or f"{kind} {text!r}"
    form = f"{PROMPT_KINDS[kind]}[@FRAME][#OBJ]"
    example = {"box": "10,20,200,180@0#1", "point": "120,80,1@3#2", "mask": "first.png@0#1"}[kind]
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: expected {form}, e.g. {example}; got nothing.")
    value, frame, obj = text.strip(), str(default_frame), "1"
    for sep, name in (("#", "object id"), ("@", "frame")):
        if sep in value:
            value, tail = value.rsplit(sep, 1)
            if not re.fullmatch(r"\d+", tail.strip()):
                hint = (" (a mask path holding '@' or '#' needs an explicit @FRAME#OBJ after it)" if kind == "mask"
                        else "")
                raise InputError(f"{where}: expected {form}, e.g. {example}: the {name} after '{sep}' must be a "
                                 f"whole number, got {tail!r}{hint}.")
            if sep == "#":
                obj = tail
            else:
                frame = tail
    if kind == "mask":
        if load_mask is None:
            raise InputError(f"{where}: mask prompts are not taken here.")
        mask = load_mask(value)
        return Prompt("mask", int(frame), int(obj), mask=mask, source=where)
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise InputError(f"{where}: expected {form}, e.g. {example}: {value!r} is not comma-separated "
                         f"numbers.") from None
    if kind == "box":
        return Prompt("box", int(frame), int(obj), box=tuple(numbers), source=where)
    return Prompt("point", int(frame), int(obj), point=tuple(numbers), source=where)


def load_mask_file(path: str) -> np.ndarray:
    """A mask prompt's file: any image, non-zero pixels = the object."""
    return load_image(path).max(axis=2) > 0


@dataclass
class ObjectPrompt:
    """One object's prompts on one frame, combined: a box and clicks (points P x 2, labels P), or a mask."""

    box: np.ndarray | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return " + ".join(self.sources)


def group_prompts(prompts: Iterable[Prompt], num_frames: int, hw: tuple[int, int]
                  ) -> dict[int, dict[int, ObjectPrompt]]:
    """frame -> object -> its combined prompt, every prompt checked against the video (its frames, its size)."""
    h, w = hw
    out: dict[int, dict[int, ObjectPrompt]] = {}
    for p in prompts:
        where = p.source or p.kind
        if p.frame >= num_frames:
            raise InputError(f"{where}: frame {p.frame} is past the video's end: it has {num_frames} frames "
                             f"(0..{num_frames - 1}).")
        g = out.setdefault(p.frame, {}).setdefault(p.obj, ObjectPrompt())
        g.sources.append(where)
        try:
            if p.kind == "box":
                if g.box is not None:
                    raise InputError(f"two boxes for object {p.obj} on frame {p.frame}; give one box per object "
                                     f"and frame.")
                g.box = check_boxes(p.box, hw, frame="frame", tol=1.0).clip([0, 0, 0, 0], [w, h, w, h])
            elif p.kind == "point":
                xy, _ = check_points([p.point[:2]], [p.point[2]], hw, frame="frame", tol=1.0)
                xy = xy.clip(0, [w, h])
                g.points = xy if g.points is None else np.concatenate([g.points, xy])
                lab = np.array([p.point[2]], np.int64)
                g.labels = lab if g.labels is None else np.concatenate([g.labels, lab])
            else:
                if g.mask is not None:
                    raise InputError(f"two masks for object {p.obj} on frame {p.frame}; give one.")
                if p.mask.shape != (h, w):
                    raise InputError(f"the mask is {p.mask.shape[1]}x{p.mask.shape[0]} but the video's frames are "
                                     f"{w}x{h}; give a mask of the frame's size.")
                if not p.mask.any():
                    raise InputError("the mask is empty (no non-zero pixel): nothing to track.")
                g.mask = p.mask
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        if g.mask is not None and (g.box is not None or g.points is not None):
            raise InputError(f"{g.where}: a mask and a box or clicks for object {p.obj} on frame {p.frame}; a mask "
                             f"prompt stands alone (put the clicks on another frame, or drop the mask).")
    return out


# ---------------------------------------------------------------------------------------------- frames
class ImageFrames(FrameSource):
    """A folder's image files (sorted by name), read when asked for."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.height, self.width = self.read(0).shape[:2]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        return load_image(self.paths[index])


class FirstFrames(FrameSource):
    """The first ``n`` frames of another source."""

    def __init__(self, source: FrameSource, n: int) -> None:
        self.source, self.n = source, min(n, len(source))
        self.height, self.width = source.height, source.width
        self.fps = getattr(source, "fps", None)

    def __len__(self) -> int:
        return self.n

    def read(self, index: int) -> np.ndarray:
        return self.source.read(index)


def open_frames(source: str | os.PathLike[str], max_frames: int | None = None) -> FrameSource:
    """A video file (OpenCV, the ``eval`` extra) or a folder of image files, read as frames are needed."""
    path = Path(source)
    if path.is_dir():
        frames: FrameSource = ImageFrames(list_images(path, what="frame"))
    elif path.is_file():
        from ..optional import require

        cv2 = require("cv2", "reading video files (a folder of frames needs nothing)")
        frames = VideoFile(path)
        cap = cv2.VideoCapture(str(path))
        frames.fps = cap.get(cv2.CAP_PROP_FPS) or None
        cap.release()
    else:
        raise InputError(f"video not found: {path} (a video file or a folder of frames).")
    return frames if max_frames is None else FirstFrames(frames, max_frames)


# ---------------------------------------------------------------------------------------------- tracking
FrameResult = dict[int, Frame]  # object id -> its result, for the objects present on a frame


def _start_frame(prompts: dict[int, dict[int, ObjectPrompt]], seeds: dict, start: int) -> int | None:
    """Where tracking begins: ``start`` when objects resume there, else the first prompted frame (None: none)."""
    if seeds:
        return start
    return min((f for f in prompts if f >= start), default=None)


def track_with_memory_objects(model, frames: FrameSource, prompts: dict[int, dict[int, ObjectPrompt]],
                              start: int = 0, seeds: dict[int, tuple[int, np.ndarray]] | None = None,
                              video_options: dict | None = None) -> Iterator[tuple[int, FrameResult]]:
    """Every frame from ``start`` on with a SAM 2 model (``VideoPredictor``): (frame, results). ``prompts``:
    ``group_prompts``'s; those on frames before ``start`` are done. ``seeds``: object -> (frame < start, mask) to
    resume from. A frame's score for an object is its mean foreground probability inside its mask; an empty
    mask is lost ("object absent"). ``video_options``: ``VideoPredictor``'s (``dtype``, ``compile``)."""
    seeds = seeds or {}
    n = len(frames)
    begin = _start_frame(prompts, seeds, start)
    if begin is None:  # nothing to track from here on
        for f in range(start, n):
            yield f, {}
        return
    for f in range(start, begin):  # no object yet
        yield f, {}
    # corrections become conditioning frames (else the next pass over their frame would track over them)
    predictor = VideoPredictor(model, non_overlap_masks=True, add_all_frames_to_correct_as_cond=True,
                               **(video_options or {}))
    state = predictor.init_state(frames)  # frames read as needed
    for obj, (f, mask) in sorted(seeds.items()):
        predictor.add_new_mask(state, f, obj, mask)
    pending = {f: p for f, p in prompts.items() if f >= begin}

    def apply(f: int) -> None:
        for obj, g in sorted(pending.pop(f).items()):
            try:
                if g.mask is not None:
                    predictor.add_new_mask(state, f, obj, g.mask)
                else:
                    predictor.add_new_points_or_box(state, f, obj, points=g.points, labels=g.labels, box=g.box)
            except InputError as e:
                raise InputError(f"{g.where}: {e}") from None

    current = begin
    if current in pending:
        apply(current)
    while current is not None:
        restart = None
        gen = predictor.propagate_in_video(state, start_frame_idx=current)
        for f, obj_ids, logits in gen:
            if f in pending and f != current:  # a correction: tracked to here, now its prompts, then on from it
                apply(f)
                restart = f
                gen.close()
                break
            yield f, memory_results(obj_ids, logits)
        current = restart


def memory_results(obj_ids: list, logits: torch.Tensor) -> FrameResult:
    """Per object: its mask (logits > 0), score (mean foreground probability inside it), lost when empty."""
    out = {}
    for obj, lg in zip(obj_ids, logits[:, 0].float()):
        m = lg > 0
        score = float(torch.sigmoid(lg)[m].mean()) if bool(m.any()) else 0.0
        mask = m.cpu().numpy()
        b = mask_box(mask)
        out[obj] = Frame(mask, score, None if b is None else [float(v) for v in b], not mask.any(),
                         None if mask.any() else "object absent")
    return out


def track_with_memory(model, frames: Iterable[np.ndarray], box=None, mask: np.ndarray | None = None,
                      point=None) -> Iterator[Frame]:
    """One object through ``frames`` with a SAM 2 model: ``box`` (x0, y0, x1, y1), ``point`` (x, y, a positive
    click) or ``mask`` (H x W) on the first frame (``track_with_memory_objects`` for more)."""
    from ..video.frames import open_video

    if sum(x is not None for x in (box, mask, point)) != 1:
        raise InputError("give exactly one of box, point or mask for the first frame.")
    source = open_video(frames)
    if mask is not None:
        p = Prompt("mask", mask=np.asarray(mask))
    elif box is not None:
        p = Prompt("box", box=tuple(np.asarray(box, np.float64).tolist()))
    else:
        p = Prompt("point", point=tuple(np.asarray(point, np.float64).tolist()))
    grouped = group_prompts([p], len(source), (source.height, source.width))
    for _, results in track_with_memory_objects(model, source, grouped):
        if 1 in results:
            yield results[1]


def track_objects(model, frames: FrameSource, prompts: dict[int, dict[int, ObjectPrompt]], start: int = 0,
                  seeds: dict[int, tuple[int, np.ndarray]] | None = None, predictor_factory: Callable | None = None,
                  tracker_config=None, video_options: dict | None = None) -> Iterator[tuple[int, FrameResult]]:
    """Frames ``start`` .. end with every prompted object: SAM 2 models with their memory (``video_options`` go to
    ``VideoPredictor``), image-only models with ``MultiTracker`` (``predictor_factory()`` makes its Predictor;
    default: torch)."""
    if is_video_model(model):
        yield from track_with_memory_objects(model, frames, prompts, start, seeds, video_options)
        return
    from ..predictor import Predictor
    from .tracker import MultiTracker, TrackerConfig

    predictor = predictor_factory() if predictor_factory is not None else Predictor(model)
    tracker = MultiTracker(predictor, tracker_config or TrackerConfig())
    yield from tracker.track(frames, prompts, start, seeds)


# ---------------------------------------------------------------------------------------------- outputs
LOG = "track.jsonl"
SUMMARY = "track.json"
OVERLAY = "overlay.mp4"


def frame_record(frame: int, results: FrameResult) -> dict:
    """One frame's JSON record: per object (by id, as a string key) its COCO RLE, score, box (x0, y0, x1, y1 of
    the mask; null when empty), area, lost and the reason."""
    objects = {}
    for obj in sorted(results):
        r = results[obj]
        b = mask_box(r.mask)
        objects[str(obj)] = {"rle": encode_mask(r.mask), "score": round(float(r.score), 6),
                             "box": None if b is None else [float(v) for v in b], "area": int(r.mask.sum()),
                             "lost": r.lost, "reason": r.reason}
    return {"frame": frame, "objects": objects}


def label_values(objects: Iterable[int]) -> dict[int, int]:
    """Object id -> its value in the label PNGs: 255 for a single object (DAVIS 2016's and ``swiftsam track``'s
    0 / 255 masks), the id for several."""
    objects = sorted(set(objects))
    return {objects[0]: 255} if len(objects) == 1 else {o: o for o in objects}


class TrackWriter:
    """``swiftsam track``'s outputs in ``out`` (the module's doc), resumable: ``done`` holds the frames written
    by an earlier run with the same ``settings`` (another run's outputs are an error unless ``overwrite``)."""

    def __init__(self, out: str | os.PathLike[str], settings: dict, num_frames: int, objects: Iterable[int],
                 overwrite: bool = False) -> None:
        self.out = Path(out)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.num_frames = num_frames
        self.values = label_values(objects)
        self.records: dict[int, dict] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(self.out)
        log = self.out / LOG
        if log.exists() and not overwrite:
            self.records = self._read_log(log)
        else:
            with atomic_path(log) as tmp:
                tmp.write_text(json.dumps({"settings": self.settings}) + "\n")
            if overwrite:  # another run's outputs: its label PNGs, summary and overlay
                for old in [self.out / SUMMARY, self.out / OVERLAY, *self.out.glob("[0-9]" * 5 + ".png")]:
                    if old.exists():
                        old.unlink()
        self._log = open(log, "a", encoding="utf-8")

    def _read_log(self, log: Path) -> dict[int, dict]:
        lines = log.read_text(encoding="utf-8").split("\n")
        try:
            header = json.loads(lines[0])["settings"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{log} is not a swiftsam track log: give another --out, or --overwrite.") from None
        if header != self.settings and not any(line.strip() for line in lines[1:]):  # no frame written: start anew
            with atomic_path(log) as tmp:
                tmp.write_text(json.dumps({"settings": self.settings}) + "\n")
            return {}
        if header != self.settings:
            diff = sorted(k for k in set(header) | set(self.settings) if header.get(k) != self.settings.get(k))
            raise InputError(f"{self.out} holds a track made with other settings ({', '.join(diff)} differ): give "
                             f"another --out, or --overwrite to start again.")
        records, good = {}, len(lines[0]) + 1
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                k = rec["frame"]
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a kill, and what follows it
            good += len(line) + 1
            if k == len(records) and (self.out / f"{k:05d}.png").is_file():  # frames are written in order
                records[k] = rec
            else:
                break
        with open(log, "r+", encoding="utf-8") as f:  # drop what was not kept (a cut line)
            f.truncate(min(good, os.path.getsize(log)))
        return records

    @property
    def next_frame(self) -> int:
        return len(self.records)

    def seeds(self) -> dict[int, tuple[int, np.ndarray]]:
        """Object -> (frame, mask) of its last non-empty written mask: where a resumed run starts it from."""
        last: dict[int, tuple[int, np.ndarray]] = {}
        for k in sorted(self.records, reverse=True):
            for obj, r in self.records[k]["objects"].items():
                if int(obj) not in last and r["area"] > 0:
                    last[int(obj)] = (k, decode_rle(r["rle"]))
        return last

    def write(self, frame: int, results: FrameResult, hw: tuple[int, int]) -> None:
        from PIL import Image

        if frame != self.next_frame:
            raise AssertionError(f"frame {frame} written out of order (next is {self.next_frame})")
        label = np.zeros(hw, np.uint8)
        for obj, r in results.items():
            label[r.mask] = self.values[obj]
        with atomic_path(self.out / f"{frame:05d}.png") as tmp:
            Image.fromarray(label).save(tmp, format="PNG")
        rec = frame_record(frame, results)
        self._log.write(json.dumps(rec) + "\n")
        self._log.flush()
        self.records[frame] = rec

    def finish(self) -> dict:
        """``track.json``: the settings, per-object counts and every frame's record. Returns it."""
        self._log.close()
        rows = [self.records[k] for k in sorted(self.records)]
        lost: dict[str, int] = {}
        for row in rows:
            for obj, r in row["objects"].items():
                lost[obj] = lost.get(obj, 0) + bool(r["lost"])
        summary = {"settings": self.settings, "frames": len(rows), "objects": sorted(self.values),
                   "label_values": {str(k): v for k, v in self.values.items()}, "lost": sum(lost.values()),
                   "lost_per_object": lost, "per_frame": rows}
        with atomic_path(self.out / SUMMARY) as tmp:
            tmp.write_text(json.dumps(summary))
        return summary

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()


def write_overlay(frames: FrameSource, out: str | os.PathLike[str], objects: Iterable[int], fps: float | None = None,
                  progress: bool = False) -> Path:
    """``OUT/overlay.mp4``: each frame with its objects' masks blended in (colour by object), read back from the
    label PNGs; written atomically (OpenCV: the ``eval`` extra)."""
    from PIL import Image

    from ..optional import require
    from ..visualize import overlay

    cv2 = require("cv2", "the overlay video (overlay.mp4; --no-overlay skips it)")
    out = Path(out)
    values = label_values(objects)
    n, (h, w) = len(frames), (frames.height, frames.width)
    target = out / OVERLAY
    with atomic_path(target) as tmp:
        video = tmp.with_name(tmp.name + ".mp4")  # OpenCV picks the container by the suffix
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), float(fps or 25.0), (w, h))
        if not writer.isOpened():
            raise InputError(f"OpenCV cannot write an mp4 video in {out}; drop the overlay with --no-overlay.")
        try:
            for k in _progress(range(n), progress, "overlay"):
                label = np.asarray(Image.open(out / f"{k:05d}.png"))
                masks = np.stack([label == v for v in values.values()])
                writer.write(np.asarray(overlay(frames[k], masks))[:, :, ::-1].copy())
        finally:
            writer.release()
        os.replace(video, tmp)
    return target


def _progress(it, enabled: bool, desc: str, total: int | None = None, initial: int = 0):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, initial=initial, unit="frame", leave=False, dynamic_ncols=True,
                disable=None)  # None: off when stderr is not a terminal


def run_track(model, frames: FrameSource, prompts: list[Prompt], out: str | os.PathLike[str], settings: dict, *,
              overwrite: bool = False, overlay: bool | None = None, progress: bool = False,
              predictor_factory: Callable | None = None, tracker_config=None,
              video_options: dict | None = None) -> dict:
    """Track ``prompts`` through ``frames`` into ``out`` (label PNGs, track.json, overlay.mp4), resuming what an
    earlier run with the same ``settings`` wrote. ``overlay``: True writes it (OpenCV needed), None writes it when
    OpenCV is installed, False not. Returns the summary (plus ``resumed_from`` and ``overlay``: its path or why
    not)."""
    from ..optional import MissingDependencyError

    n, hw = len(frames), (frames.height, frames.width)
    grouped = group_prompts(prompts, n, hw)
    objects = sorted({p.obj for p in prompts})
    if not objects:
        raise InputError("no prompt: give at least one --box, --point or --mask.")
    if overlay:
        from ..optional import require

        require("cv2", "the overlay video (overlay.mp4; --no-overlay skips it)")  # before any work
    writer = TrackWriter(out, {**settings, "frames": n, "size": list(hw), "prompts": [p.describe() for p in prompts]},
                         n, objects, overwrite)
    start = writer.next_frame
    try:
        if start < n:
            seeds = writer.seeds() if start else {}
            remaining = {f: g for f, g in grouped.items() if f >= start}
            it = track_objects(model, frames, remaining, start=start, seeds=seeds,
                               predictor_factory=predictor_factory, tracker_config=tracker_config,
                               video_options=video_options)
            for f, results in _progress(it, progress, "track", total=n, initial=start):
                writer.write(f, results, hw)
        summary = writer.finish()
    finally:
        writer.close()
    summary["resumed_from"] = start
    if overlay is False:
        summary["overlay"] = "not asked for (--no-overlay)"
    elif start == n and (Path(out) / OVERLAY).is_file():  # nothing new: the one written before stands
        summary["overlay"] = str(Path(out) / OVERLAY)
    else:
        try:
            summary["overlay"] = str(write_overlay(frames, out, objects, getattr(frames, "fps", None), progress))
        except MissingDependencyError as e:
            summary["overlay"] = f"skipped: {e}"
    return summary
