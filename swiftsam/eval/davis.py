"""DAVIS measures of a video object segmentation: region similarity J (IoU) and boundary accuracy F.

F follows the DAVIS toolkit's definition: the boundary pixels of the prediction and of the ground truth are
matched within a tolerance of ``max(1, round(0.008 * image diagonal))`` pixels (a disk: 8 px at DAVIS's 854x480);
precision = the share of predicted boundary pixels near a ground-truth boundary pixel, recall = the share of
ground-truth boundary pixels near a predicted one, F = their harmonic mean. Two empty masks score J = F = 1; an
empty prediction of a non-empty object scores 0 (and the reverse). A sequence's J and F are the means over its
frames **without the first and the last** (the first frame's mask is the prompt; the DAVIS toolkit leaves both
out); its J&F is the mean of the two.

A boundary pixel is a foreground pixel with a 4-neighbour of background (the image's edge does not count as
background: a mask that fills the image has no boundary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..masks import mask_iou
from ..optional import require

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal (DAVIS's bound_th)


def _binary(mask: object, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2 or min(m.shape) < 1:
        raise InputError(f"{what} must be a 2-D H x W mask, got shape {m.shape}.")
    return m.astype(bool)


def _pair(pred: object, gt: object) -> tuple[np.ndarray, np.ndarray]:
    p, g = _binary(pred, "the predicted mask"), _binary(gt, "the ground-truth mask")
    if p.shape != g.shape:
        raise InputError(f"the predicted mask is {p.shape[1]}x{p.shape[0]} but the ground truth "
                         f"{g.shape[1]}x{g.shape[0]}; compare masks of one size.")
    return p, g


def region_j(pred: object, gt: object) -> float:
    """J: IoU of a predicted and a ground-truth mask (H x W); 1 when both are empty."""
    p, g = _pair(pred, gt)
    return float(mask_iou(p, g))


def boundary(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask: foreground with a background 4-neighbour (inside the image)."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, mode="edge")  # the image's edge repeats the pixel: no boundary there
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def tolerance_px(shape: Sequence[int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """The matching radius for an H x W image: max(1, round(tolerance * diagonal))."""
    return max(1, int(round(tolerance * float(np.hypot(shape[0], shape[1])))))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    cv2 = require("cv2", "the DAVIS boundary measure F")
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = (x * x + y * y <= radius * radius).astype(np.uint8)
    return cv2.dilate(mask.astype(np.uint8), disk) > 0


def boundary_f(pred: object, gt: object, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: the boundary F-measure of a predicted and a ground-truth mask (H x W), boundaries matched within
    ``tolerance_px`` pixels. 1 when neither has a boundary; 0 when only one has."""
    p, g = _pair(pred, gt)
    bp, bg = boundary(p), boundary(g)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    r = tolerance_px(p.shape, tolerance)
    precision = float((bp & _dilate(bg, r)).sum()) / n_p
    recall = float((bg & _dilate(bp, r)).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def sequence_scores(j: Sequence[float], f: Sequence[float]) -> dict:
    """A sequence's {"j", "f", "jf"} from its per-frame J and F (every frame, the first included): the means over
    the frames without the first and the last. Needs 3 frames or more."""
    if len(j) != len(f):
        raise InputError(f"{len(j)} J values but {len(f)} F values: give one of each per frame.")
    if len(j) < 3:
        raise InputError(f"a DAVIS sequence needs at least 3 frames (the first and the last are not scored), "
                         f"got {len(j)}.")
    jm, fm = float(np.mean(j[1:-1])), float(np.mean(f[1:-1]))
    return {"j": jm, "f": fm, "jf": (jm + fm) / 2}


def davis_table(results: dict[str, dict]) -> str:
    """A Markdown table of per-sequence J, F, J&F (``results``: name -> sequence_scores) and their means."""
    rows = ["| sequence | frames | J | F | J&F |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        rows.append(f"| {name} | {r.get('frames', '')} | {r['j']:.3f} | {r['f']:.3f} | {r['jf']:.3f} |")
    if results:
        means = {k: float(np.mean([r[k] for r in results.values()])) for k in ("j", "f", "jf")}
        rows.append(f"| mean | | {means['j']:.3f} | {means['f']:.3f} | {means['jf']:.3f} |")
    return "\n".join(rows)
