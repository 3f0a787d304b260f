"""Tracking with any image model (NanoSAM's tracker idea): each frame is prompted from the previous result.

The prompt for frame t is built from the previous result: its mask's box (grown by ``box_margin``), optionally a
foreground point at the mask's interior maximum (the pixel farthest from its border), and its low-res logits as
mask input; all go through ``Predictor.predict_best`` (the one prompt path). The defaults (box, no margin, mask
input, no point) are the best of those measured on DAVIS 2016 for the bundled model (benchmarks/apps.md).
A result whose predicted IoU falls below ``min_score``, or whose area jumps by more than ``max_area_change``
times (either way) from the last good mask, or that is empty, is a **loss**: the frame gets no mask, and the
next frames are prompted from the last good result with a wider box (``search_margin``) and no mask input until
a result passes again (**re-acquisition**). ``evaluate_davis`` runs it over DAVIS sequences from their first
ground-truth mask.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..image_io import ImageLike, list_images, load_image
from ..masks import mask_iou
from ..predictor import Predictor


@dataclass(frozen=True)
class TrackerConfig:
    """What a frame's prompt holds and when a result counts as lost (measured on DAVIS: benchmarks/apps.md)."""

    box: bool = True
    point: bool = False
    mask_input: bool = True
    box_margin: float = 0.0
    search_margin: float = 0.3
    min_score: float = 0.0
    max_area_change: float = 4.0
    candidates: str = "multimask"


@dataclass
class Frame:
    """One frame's result: the mask (H x W bool; empty when lost), the predicted IoU, the prompt box, lost."""

    mask: np.ndarray
    score: float
    box: list[float] | None
    lost: bool
    reason: str | None = None


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """x0, y0, x1, y1 (pixel edges) of a mask's foreground, None when empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def grow_box(box: np.ndarray, margin: float, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    mx, my = margin * (box[2] - box[0]), margin * (box[3] - box[1])
    return np.array([max(0.0, box[0] - mx), max(0.0, box[1] - my), min(float(w), box[2] + mx),
                     min(float(h), box[3] + my)])


def interior_point(mask: np.ndarray, max_side: int = 128) -> np.ndarray | None:
    """x, y of a foreground pixel farthest from the mask's border (a distance-transform maximum, by erosion on a
    copy at most ``max_side`` pixels wide), the one nearest the centroid among ties; None when empty."""
    if not mask.any():
        return None
    step = max(1, int(np.ceil(max(mask.shape) / max_side)))
    small = mask[::step, ::step]
    if not small.any():  # thin mask lost by subsampling: its pixel nearest the centroid
        ys, xs = np.nonzero(mask)
        k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        return np.array([xs[k] + 0.5, ys[k] + 0.5])
    core = small
    while True:
        p = np.pad(core, 1)
        eroded = core & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        if not eroded.any():
            break
        core = eroded
    ys, xs = np.nonzero(core)
    k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    x, y = min(mask.shape[1] - 1, xs[k] * step), min(mask.shape[0] - 1, ys[k] * step)
    return np.array([x + 0.5, y + 0.5])


class Tracker:
    """One object through a sequence of frames with an image-only model (``Predictor``)."""

    def __init__(self, predictor: Predictor, config: TrackerConfig = TrackerConfig()) -> None:
        if config.candidates not in ("multimask", "single", "all"):
            raise InputError(f"candidates must be 'multimask', 'single' or 'all', got {config.candidates!r}.")
        self.predictor, self.config = predictor, config
        self._good: dict | None = None  # the last good result: box, point, low-res logits, area
        self.lost = False

    def _run(self, box: np.ndarray | None, point: np.ndarray | None, low: np.ndarray | None,
             labels: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
        """``point``: x, y or P x 2 clicks (``labels``: P values 1 / 0; default all foreground)."""
        pts = None if point is None else np.asarray(point, np.float64).reshape(1, -1, 2)
        if pts is not None:
            labels = np.ones(pts.shape[:2]) if labels is None else np.asarray(labels, np.float64).reshape(1, -1)
        masks, scores, lows = self.predictor.predict_best(
            pts, None if pts is None else labels, None if box is None else box[None],
            candidates=self.config.candidates, mask_input=None if low is None else low[None], return_low_res=True)
        return masks[0], float(scores[0]), lows[0]

    def start(self, image: ImageLike, box: object = None, mask: np.ndarray | None = None,
              point: object = None, labels: object = None) -> Frame:
        """Start on ``image`` from a box (x0, y0, x1, y1), a mask (H x W: its box and interior point are the
        prompt) or a point (x, y; or P x 2 clicks with ``labels``, 1 foreground / 0 background, default all 1),
        a box and clicks together; returns the first frame's result (for a mask: that mask)."""
        image = load_image(image)
        return self.start_encoded(image.shape[:2], box, mask, point, labels, image=image)

    def start_encoded(self, hw: tuple[int, int], box: object = None, mask: np.ndarray | None = None,
                      point: object = None, labels: object = None, image: np.ndarray | None = None) -> Frame:
        """``start`` on the image the predictor holds (of size ``hw``), or on ``image`` (encoded after the
        checks)."""
        given = mask
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != hw:
                raise InputError(f"the first mask is {mask.shape[1]}x{mask.shape[0]}, the frame {hw[1]}x{hw[0]}.")
            box, point = mask_box(mask), interior_point(mask)
            if box is None:
                raise InputError("the first mask is empty: nothing to track.")
        if box is None and point is None:
            raise InputError("start tracking from a box, a mask or a point.")
        if image is not None:
            self.predictor.set_image(image)  # after the checks: a bad start costs no encoding
        box = None if box is None else np.asarray(box, dtype=np.float64)
        point = None if point is None else np.asarray(point, dtype=np.float64)
        out, score, low = self._run(box if self.config.box or point is None else None, point, None,
                                    None if given is not None else labels)
        if given is not None:
            out = mask
        if not out.any():
            raise InputError("the first prompt gives an empty mask: nothing to track; give another box or point.")
        self._keep(out, low)
        return Frame(out, score, None if box is None else box.tolist(), False)

    def _keep(self, mask: np.ndarray, low: np.ndarray) -> None:
        self._good = {"box": mask_box(mask), "point": interior_point(mask), "low": low, "area": int(mask.sum())}
        self.lost = False

    def resume(self, mask: np.ndarray, lost: bool = False) -> None:
        """Go on from ``mask`` (H x W, non-empty), e.g. the last mask an interrupted run wrote (``lost``: frames
        were lost since): the next ``step`` is prompted from it, without mask input."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise InputError("cannot resume tracking from an empty mask.")
        self._good = {"box": mask_box(mask), "point": interior_point(mask), "low": None, "area": int(mask.sum())}
        self.lost = lost

    def step(self, image: ImageLike) -> Frame:
        """The next frame: prompted from the last good result (see the module's doc)."""
        if self._good is None:
            raise InputError("call start(...) with the first frame before step().")
        self.predictor.set_image(image)
        return self.step_encoded()

    def step_encoded(self) -> Frame:
        """``step`` on the image the predictor holds."""
        if self._good is None:
            raise InputError("call start(...) with the first frame before step().")
        c, g = self.config, self._good
        hw = self.predictor.original_size
        box = grow_box(g["box"], c.search_margin if self.lost else c.box_margin, hw)
        use_box = c.box or not c.point
        out, score, low = self._run(box if use_box else None, g["point"] if c.point else None,
                                    g["low"] if c.mask_input and not self.lost else None)
        area = int(out.sum())
        reason = None
        if area == 0:
            reason = "empty mask"
        elif score < c.min_score:
            reason = f"predicted IoU {score:.3f} < {c.min_score}"
        elif max(area / g["area"], g["area"] / area) > c.max_area_change:
            reason = f"area changed {area / g['area']:.2f}x (limit {c.max_area_change}x)"
        if reason is not None:
            self.lost = True
            return Frame(np.zeros(hw, bool), score, box.tolist(), True, reason)
        self._keep(out, low)
        return Frame(out, score, box.tolist(), False)

    def track(self, frames: Iterable[ImageLike], box: object = None, mask: np.ndarray | None = None,
              point: object = None) -> Iterator[Frame]:
        """``start`` on the first frame, ``step`` on the others; yields every frame's result."""
        it = iter(frames)
        try:
            first = next(it)
        except StopIteration:
            raise InputError("no frames to track.") from None
        yield self.start(first, box=box, mask=mask, point=point)
        for frame in it:
            yield self.step(frame)


class MultiTracker:
    """Several objects through a video with an image-only model: one ``Tracker`` per object, one encoding per
    frame. An object starts at its first prompt's frame; a prompt on a later frame starts it again there (an image
    model has no memory: the click is the new start). Overlapping masks are made disjoint: a pixel goes to the
    object with the higher predicted IoU."""

    def __init__(self, predictor: Predictor, config: TrackerConfig = TrackerConfig()) -> None:
        self.predictor, self.config = predictor, config

    def track(self, frames, prompts: dict, start: int = 0, seeds: dict | None = None
              ) -> Iterator[tuple[int, dict[int, Frame]]]:
        """(frame index, object -> Frame) for frames ``start`` .. end of ``frames`` (a ``video.frames``
        FrameSource). ``prompts``: frame -> object -> its prompt (``video_track.group_prompts``); ``seeds``:
        object -> (frame < start, mask) to go on from (a resumed run)."""
        trackers: dict[int, Tracker] = {}
        for obj, (k, mask) in (seeds or {}).items():
            trackers[obj] = Tracker(self.predictor, self.config)
            trackers[obj].resume(mask, lost=k != start - 1)
        for f in range(start, len(frames)):
            here = prompts.get(f, {})
            if not trackers and not here:
                yield f, {}
                continue
            image = frames[f]
            self.predictor.set_image(image)
            hw = image.shape[:2]
            results: dict[int, Frame] = {}
            for obj in sorted(set(trackers) | set(here)):
                g = here.get(obj)
                if g is None:
                    results[obj] = trackers[obj].step_encoded()
                    continue
                trackers[obj] = Tracker(self.predictor, self.config)
                try:
                    results[obj] = trackers[obj].start_encoded(hw, box=g.box, mask=g.mask, point=g.points,
                                                               labels=g.labels)
                except InputError as e:
                    raise InputError(f"{g.where}: {e}") from None
            yield f, disjoint(results)


def disjoint(results: dict[int, Frame]) -> dict[int, Frame]:
    """The objects' masks without overlaps: a pixel several masks hold goes to the highest-scoring of them."""
    if len(results) < 2:
        return results
    objs = sorted(results, key=lambda o: results[o].score)  # ascending: the best is drawn last
    owner = np.zeros(results[objs[0]].mask.shape, np.int64)
    for i, o in enumerate(objs, start=1):
        owner[results[o].mask] = i
    out = {}
    for i, o in enumerate(objs, start=1):
        r = results[o]
        mask = owner == i
        hidden = r.reason is None and r.mask.any() and not mask.any()
        out[o] = Frame(mask, r.score, r.box, r.lost or hidden, "covered by other objects" if hidden else r.reason)
    return {o: out[o] for o in sorted(out)}


# ------------------------------------------------------------------ video input
def read_frames(source: str | os.PathLike[str], max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Frames (H x W x 3 uint8 RGB) of a folder of images (sorted by name) or a video file (OpenCV)."""
    path = Path(source)
    if path.is_dir():
        for n, im in enumerate(list_images(path, what="frame")):
            if max_frames is not None and n >= max_frames:
                return
            yield load_image(im)
        return
    if not path.is_file():
        raise InputError(f"video not found: {path} (a video file or a folder of frames).")
    from ..optional import require

    cv2 = require("cv2", "reading video files (a folder of frames needs nothing)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"OpenCV cannot open {path} as a video; give a video file it reads (mp4, avi) or a folder "
                         f"of frames.")
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            yield np.ascontiguousarray(bgr[..., ::-1])
    finally:
        cap.release()
    if n == 0:
        raise InputError(f"OpenCV read no frame from {path}.")


# ------------------------------------------------------------------ DAVIS
@dataclass
class SequenceResult:
    name: str
    frames: int
    j: float  # mean IoU over frames 1..N-1 (the first frame's mask is given)
    lost: int
    ious: list[float] = field(default_factory=list)


def davis_sequences(root: str | os.PathLike[str]) -> list[str]:
    root = Path(root)
    if not (root / "JPEGImages").is_dir() or not (root / "Annotations").is_dir():
        raise InputError(f"{root} is not a DAVIS root (JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png).")
    return sorted(p.name for p in (root / "JPEGImages").iterdir() if p.is_dir())


def evaluate_davis(predictor: Predictor, root: str | os.PathLike[str], sequences: list[str] | None = None,
                   config: TrackerConfig = TrackerConfig(), max_frames: int | None = None) -> dict:
    """Track each DAVIS 2016 sequence from its first ground-truth mask (binary: any non-zero pixel); J = mean
    IoU over the other frames (a lost frame's empty mask counts). Returns {"config", "sequences", "j_mean"}."""
    from PIL import Image

    root = Path(root)
    names = sequences or davis_sequences(root)
    results = []
    for name in names:
        frames = sorted((root / "JPEGImages" / name).glob("*.jpg"))[:max_frames]
        gts = sorted((root / "Annotations" / name).glob("*.png"))[:max_frames]
        if not frames or len(frames) != len(gts):
            raise InputError(f"DAVIS sequence {name}: {len(frames)} frames but {len(gts)} masks in {root}.")
        masks = [np.asarray(Image.open(g).convert("L")) > 0 for g in gts]
        tracker = Tracker(predictor, config)
        ious, lost = [], 0
        for k, result in enumerate(tracker.track(frames, mask=masks[0])):
            if k:
                ious.append(float(mask_iou(result.mask, masks[k])))
                lost += result.lost
        results.append(SequenceResult(name, len(frames), float(np.mean(ious)) if ious else 1.0, lost, ious))
    return {"config": asdict(config), "sequences": {r.name: {"frames": r.frames, "j": r.j, "lost": r.lost}
                                                   for r in results},
            "j_mean": float(np.mean([r.j for r in results]))}


def write_track(frames: Iterable[Frame], out: str | os.PathLike[str]) -> dict:
    """Masks as ``OUT/00000.png`` ... (0 / 255, written atomically) and ``OUT/track.json`` (per frame: score, box,
    lost, reason). Returns the track summary."""
    from PIL import Image

    from ..utils import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, f in enumerate(frames):
        with atomic_path(out / f"{k:05d}.png") as tmp:
            Image.fromarray(f.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        rows.append({"frame": k, "score": f.score, "box": f.box, "area": int(f.mask.sum()), "lost": f.lost,
                     "reason": f.reason})
    summary = {"frames": len(rows), "lost": sum(r["lost"] for r in rows), "per_frame": rows}
    with atomic_path(out / "track.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
