"""``swiftsam eval davis``: DAVIS's semi-supervised protocol with any model.

Each sequence is tracked from its first ground-truth mask (DAVIS 2016: any non-zero pixel is the object). SAM 2
models (their decoder predicts an object score) track with memory (``VideoPredictor``); image-only models with the
tracker of ``apps.tracker`` (each frame prompted from the previous result). Every frame's mask is written as
``OUT/<sequence>/00000.png`` ... (0 / 255), the per-frame and per-sequence J and F (``eval.davis``) as
``OUT/<sequence>/scores.json``, and the means over the sequences as ``OUT/summary.json``. A sequence whose
``scores.json`` exists is not tracked again (an interrupted run resumes); results of other settings in ``OUT`` are
an error unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..eval.davis import boundary_f, davis_table, region_j, sequence_scores
from ..predictor import Predictor
from ..utils import atomic_path, remove_stale_parts
from ..video.frames import FrameSource
from .tracker import Tracker, TrackerConfig, davis_sequences
from .video_track import is_video_model, track_with_memory

SCORES = "scores.json"
SUMMARY = "summary.json"


def check_sequences(root: str | os.PathLike[str], sequences: list[str] | None = None) -> list[str]:
    """The sequences to run (all of ``root`` by default), each checked to exist with frames and masks."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"DAVIS root {root} does not exist: give the folder holding JPEGImages/ and Annotations/.")
    available = davis_sequences(root)
    if not available:
        raise InputError(f"{root / 'JPEGImages'} holds no sequence folder.")
    names = list(sequences) if sequences else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InputError(f"unknown DAVIS sequence(s) {', '.join(unknown)} in {root}; it has: {', '.join(available)}.")
    if len(set(names)) != len(names):
        raise InputError(f"a sequence is named twice in {', '.join(names)}.")
    return names


class _Frames(FrameSource):
    """Frame files read when asked for (VideoPredictor's lazy input, limited to ``paths``)."""

    def __init__(self, paths: list[Path]) -> None:
        from ..image_io import load_image

        self._load = load_image
        self.paths = paths
        self.height, self.width = self.read(0).shape[:2]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray:
        return self._load(self.paths[index])


def _ground_truth(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 0
    except OSError as e:
        raise InputError(f"cannot read the DAVIS mask {path}: {e}") from e


def _track_video(model: object, frames: list[Path], first: np.ndarray) -> Iterator[tuple[np.ndarray, bool]]:
    for result in track_with_memory(model, _Frames(frames), mask=first):  # frames read as needed
        yield result.mask, result.lost


def _track_image(predictor: Predictor, config: TrackerConfig, frames: list[Path], first: np.ndarray
                 ) -> Iterator[tuple[np.ndarray, bool]]:
    for result in Tracker(predictor, config).track(frames, mask=first):
        yield result.mask, result.lost


def run_davis(model: object, root: str | os.PathLike[str], out: str | os.PathLike[str], *,
              sequences: list[str] | None = None, max_frames: int | None = None, engine: str = "auto",
              engine_options: dict | None = None, tracker_config: TrackerConfig = TrackerConfig(),
              settings: dict | None = None, overwrite: bool = False,
              log: Callable[[str], None] | None = None) -> dict:
    """Run DAVIS's semi-supervised protocol for ``model`` over ``sequences`` of ``root`` (all by default), at most
    ``max_frames`` frames each (3 or more); results under ``out`` (see the module's doc). ``engine`` /
    ``engine_options`` make the image-only models' Predictor (SAM 2 models track with torch). ``settings``: what
    else identifies the run (the model's name...), kept in the JSONs and checked on resume. Returns the summary."""
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 3):
        raise InputError(f"max_frames must be 3 or more (the first and last frames are not scored), got "
                         f"{max_frames!r}.")
    root, out = Path(root), Path(out)
    names = check_sequences(root, sequences)
    video = is_video_model(model)
    engine_options = dict(engine_options or {})
    if video and (engine not in ("auto", "torch") or engine_options):
        raise InputError("SAM 2 models track video with torch (VideoPredictor): drop --engine / --dtype / --threads / "
                         "--onnx-dir.")
    run_settings = {**(settings or {}), "max_frames": max_frames,
                    "tracker": "sam2-memory" if video else {"image": asdict(tracker_config)}}
    run_settings = json.loads(json.dumps(run_settings))  # as it reads back from JSON
    predictor: Predictor | None = None
    results = {}
    for name in names:
        seq_dir = out / name
        done = seq_dir / SCORES
        if done.is_file() and not overwrite:
            try:
                previous = json.loads(done.read_text())
            except (OSError, ValueError):
                previous = None
            if previous is not None and previous.get("settings") != run_settings:
                raise InputError(f"{done} holds results of other settings ({previous.get('settings')}); use another "
                                 f"--out, or --overwrite to discard them.")
            if previous is not None:
                results[name] = previous
                if log:
                    log(f"{name}: done before (J&F {previous['jf']:.3f}), skipped")
                continue
        frames = sorted((root / "JPEGImages" / name).glob("*.jpg"))[:max_frames]
        gts = sorted((root / "Annotations" / name).glob("*.png"))[:max_frames]
        if len(frames) != len(gts):
            raise InputError(f"DAVIS sequence {name}: {len(frames)} frames but {len(gts)} masks in {root}; every frame "
                             f"needs its ground-truth mask.")
        if len(frames) < 3:
            raise InputError(f"DAVIS sequence {name} has {len(frames)} frames; it needs 3 or more (the first and last "
                             f"are not scored).")
        first = _ground_truth(gts[0])
        if video:
            masks = _track_video(model, frames, first)
        else:
            if predictor is None:
                predictor = Predictor(model, engine=engine, **engine_options)
            masks = _track_image(predictor, tracker_config, frames, first)
        seq_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(seq_dir)
        from PIL import Image

        rows = []
        for k, (mask, lost) in enumerate(masks):
            gt = _ground_truth(gts[k])
            if mask.shape != gt.shape:
                raise InputError(f"{name} frame {k}: the mask is {mask.shape[1]}x{mask.shape[0]}, its ground truth "
                                 f"{gt.shape[1]}x{gt.shape[0]}; frames and masks must have one size.")
            with atomic_path(seq_dir / f"{k:05d}.png") as tmp:
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
            rows.append({"frame": k, "j": region_j(mask, gt), "f": boundary_f(mask, gt), "area": int(mask.sum()),
                         "lost": bool(lost)})
        scores = sequence_scores([r["j"] for r in rows], [r["f"] for r in rows])
        result = {"sequence": name, "frames": len(rows), **scores, "lost": sum(r["lost"] for r in rows),
                  "settings": run_settings, "per_frame": rows}
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        results[name] = result
        if log:
            log(f"{name}: {len(rows)} frames, J {scores['j']:.3f}, F {scores['f']:.3f}, J&F {scores['jf']:.3f}")
    table = {n: {k: r[k] for k in ("frames", "j", "f", "jf", "lost")} for n, r in results.items()}
    summary = {"settings": run_settings, "sequences": table,
               **{k: float(np.mean([r[k] for r in table.values()])) for k in ("j", "f", "jf")},
               "table": davis_table(table)}
    with atomic_path(out / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
