"""Person keypoints (COCO's 17) -> prompts: a pose estimator's people (or ground-truth keypoints) become one
prompt per person, or per body part, for ``Predictor.predict_best``.

The person prompt (``DEFAULT_PERSON_PROMPT``, measured on coco-persons in benchmarks/apps.md): the box of the
person's labelled keypoints, grown by ``box_margin`` of its size on each side (keypoints are joints: the body
reaches past them). The keypoints can join as foreground points (for the bundled model they make the masks
worse), and other people's keypoints as background points (NanoSAM's ``pose_to_sam_points``). A part prompt
(``PARTS``) takes the part's keypoints as foreground and the person's other keypoints as background, without a
box (NanoSAM's t-shirt demo).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
_K = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
# body parts as keypoint subsets: foreground points of a part prompt (the person's other keypoints: background)
PARTS: dict[str, tuple[int, ...]] = {
    "person": tuple(range(17)),
    "head": tuple(_K[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")),
    "torso": tuple(_K[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")),
    "upper-body": tuple(range(0, 13)),
    "lower-body": tuple(range(11, 17)),
    "arms": tuple(_K[n] for n in ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                                  "right_wrist")),
    "legs": tuple(_K[n] for n in ("left_knee", "right_knee", "left_ankle", "right_ankle")),
}


@dataclass(frozen=True)
class PersonPrompt:
    """How a person's keypoints become a prompt (the combinations benchmarks/apps.md compares).

    ``points``: the keypoints as foreground points (a part prompt always has them); ``min_visibility``: 2 =
    keypoints marked visible, 1 = labelled ones too (COCO's v); ``box``: add the keypoints' box, ``box_margin``
    (a fraction of its width / height) added on each side; ``background``: the other people's keypoints as
    background points; ``candidates``: which decoder outputs compete (``Predictor.predict_best``)."""

    min_visibility: int = 1
    box: bool = True
    box_margin: float = 0.1
    background: bool = False
    candidates: str = "multimask"
    points: bool = False


DEFAULT_PERSON_PROMPT = PersonPrompt()


@dataclass
class Person:
    """One person's 17 keypoints (17 x 3: x, y, v) with what the pose estimator said about it."""

    keypoints: np.ndarray
    score: float = 1.0
    category_id: int = 1
    source: dict | None = None  # the input record, for reports

    def visible(self, min_visibility: int = 1, subset: tuple[int, ...] | None = None) -> np.ndarray:
        """K x 2 pixels of the keypoints with v >= ``min_visibility`` (among ``subset``)."""
        kp = self.keypoints if subset is None else self.keypoints[list(subset)]
        return kp[kp[:, 2] >= min_visibility, :2]


def parse_keypoints(values: object, what: str) -> np.ndarray:
    """COCO's flat [x1, y1, v1, ..., x17, y17, v17] as a 17 x 3 array, checked."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what}: keypoints must be 51 numbers [x1, y1, v1, ...], got {values!r:.80}.") from None
    if a.shape != (51,):
        raise InputError(f"{what}: keypoints must be 51 numbers (17 COCO keypoints as x, y, v), got shape {a.shape}.")
    a = a.reshape(17, 3)
    if not np.isfinite(a).all():
        raise InputError(f"{what}: keypoints contain NaN or infinite values.")
    return a


def load_keypoints(path: str | Path) -> list[dict]:
    """Person records from a COCO keypoints file (``annotations`` of an instances JSON, e.g. ground truth) or
    a pose estimator's COCO results list ([{image_id, keypoints, score}, ...]). Checked: a bad record is an
    InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"keypoints file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read keypoints {path}: {e}") from None
    records = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path} must be a COCO keypoints JSON (with 'annotations') or a results list "
                         f"[{{'image_id', 'keypoints': [x1, y1, v1, ...], 'score'}}, ...].")
    for i, r in enumerate(records):
        missing = {"image_id", "keypoints"} - set(r)
        if missing:
            raise InputError(f"person {i} in {path} lacks {', '.join(sorted(missing))}.")
        parse_keypoints(r["keypoints"], f"person {i} in {path}")
    return records


def to_people(records: list[dict]) -> list[Person]:
    """Person objects of keypoint records (one image's); ground truth (no score) counts as score 1."""
    return [Person(parse_keypoints(r["keypoints"], f"person {r.get('id', i)}"), float(r.get("score", 1.0)),
                   int(r.get("category_id", 1)), r) for i, r in enumerate(records)]


def keypoint_box(points: np.ndarray, margin: float, hw: tuple[int, int]) -> np.ndarray:
    """The box of K x 2 points grown by ``margin`` of its size on each side (at least 4 px), inside the image."""
    h, w = hw
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    mx, my = max(4.0, margin * (x1 - x0)), max(4.0, margin * (y1 - y0))
    return np.array([max(0.0, x0 - mx), max(0.0, y0 - my), min(float(w), x1 + mx), min(float(h), y1 + my)])


def person_prompts(people: list[Person], hw: tuple[int, int], prompt: PersonPrompt = DEFAULT_PERSON_PROMPT,
                   part: str = "person") -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray | None, list[dict]]:
    """Prompts for the people of one H x W image: (indices of the people prompted, points B x N x 2, labels
    B x N (1 / 0, -1 padding), boxes B x 4 or None, skipped [{person, reason}]); points and labels are None for
    a box-only prompt. A person without a visible
    keypoint of ``part`` is skipped; keypoints outside the image are clipped to it when within a pixel, else
    dropped (and reported)."""
    if part not in PARTS:
        raise InputError(f"--part must be one of {', '.join(PARTS)}, got {part!r}.")
    subset = PARTS[part]
    with_points = prompt.points or part != "person"  # the person's own keypoints as foreground points
    if not with_points and not prompt.box:
        raise InputError("a person prompt needs the keypoints' box or the keypoints as points (or both).")
    h, w = hw
    rows, skipped, kept = [], [], []
    clean = []
    for i, p in enumerate(people):
        kp = p.keypoints.copy()
        labelled = kp[:, 2] > 0
        out = labelled & ((kp[:, 0] < -1) | (kp[:, 0] > w + 1) | (kp[:, 1] < -1) | (kp[:, 1] > h + 1))
        if out.any():
            skipped.append({"person": i, "reason": f"{int(out.sum())} keypoint(s) more than 1 px outside the "
                                                   f"{w}x{h} image dropped", "kept": True})
            kp[out, 2] = 0
        kp[:, 0] = kp[:, 0].clip(0, w)
        kp[:, 1] = kp[:, 1].clip(0, h)
        clean.append(Person(kp, p.score, p.category_id, p.source))
    for i, p in enumerate(clean):
        fg = p.visible(prompt.min_visibility, subset)
        if not len(fg):
            skipped.append({"person": i, "reason": f"no keypoint of the {part} with visibility >= "
                                                   f"{prompt.min_visibility}"})
            continue
        bg = [] if part == "person" else [p.visible(prompt.min_visibility, tuple(set(range(17)) - set(subset)))]
        if prompt.background:
            bg += [q.visible(prompt.min_visibility) for j, q in enumerate(clean) if j != i]
        bg = np.concatenate(bg) if bg else np.zeros((0, 2))
        box = keypoint_box(p.visible(prompt.min_visibility), prompt.box_margin, hw) if prompt.box and part == "person" \
            else None
        rows.append((fg if with_points else np.zeros((0, 2)), bg, box))
        kept.append(i)
    if not rows:
        return [], np.zeros((0, 1, 2)), np.zeros((0, 1)), None, skipped
    n = max(len(fg) + len(bg) for fg, bg, _ in rows)
    if n == 0:  # the box alone
        return kept, None, None, np.stack([b for _, _, b in rows]), skipped
    points, labels = np.zeros((len(rows), n, 2)), -np.ones((len(rows), n))
    for r, (fg, bg, _) in enumerate(rows):
        k = len(fg) + len(bg)
        points[r, :k] = np.concatenate([fg, bg])
        labels[r, :len(fg)], labels[r, len(fg):k] = 1, 0
    boxes = np.stack([b for _, _, b in rows]) if rows[0][2] is not None else None
    return kept, points, labels, boxes, skipped
