"""Validation of user prompts (points, labels, boxes, mask inputs) in original-image pixels."""

from __future__ import annotations

import numpy as np

from .errors import InputError

VALID_LABELS = (-1, 0, 1)  # -1: padding, 0: background click, 1: foreground click


def _as_float_array(x: object, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numeric, got {x!r}.") from None
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contains NaN or infinite values.")
    return a


def check_points(coords: object, labels: object, hw: tuple[int, int], batched: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Points as (N, 2) [or (B, N, 2)] x, y pixels inside the image; labels (N,) [or (B, N)]."""
    c = _as_float_array(coords, "point_coords")
    shape = "(B, N, 2)" if batched else "(N, 2)"
    if c.ndim != (3 if batched else 2) or c.shape[-1] != 2 or c.shape[-2] == 0:
        raise InputError(f"point_coords must have shape {shape} as x, y pixels; got shape {c.shape}.")
    if labels is None:
        raise InputError("point_labels are required with point_coords: 1 = foreground, 0 = background.")
    lab = _as_float_array(labels, "point_labels")
    if lab.shape != c.shape[:-1]:
        raise InputError(f"point_labels must have shape {c.shape[:-1]} to match point_coords; got {lab.shape}.")
    if not np.all(np.isin(lab, VALID_LABELS)):
        raise InputError(f"point_labels must be 1 (foreground) or 0 (background); got {np.unique(lab).tolist()}.")
    h, w = hw
    outside = (c[..., 0] < 0) | (c[..., 0] > w) | (c[..., 1] < 0) | (c[..., 1] > h)
    if outside.any():
        bad = c[outside][:3].tolist()
        raise InputError(f"points outside the {w}x{h} image (x in 0..{w}, y in 0..{h}): {bad}.")
    return c, lab.astype(np.int64)


def check_boxes(box: object, hw: tuple[int, int], batched: bool = False) -> np.ndarray:
    """Boxes as x0, y0, x1, y1 pixels inside the image: (4,) [or (B, 4)]."""
    b = _as_float_array(box, "box")
    if (batched and (b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0)) or (not batched and b.shape != (4,)):
        want = "(B, 4)" if batched else "(4,)"
        raise InputError(f"box must have shape {want} as x0, y0, x1, y1 pixels; got shape {b.shape}.")
    b2 = b.reshape(-1, 4)
    flipped = (b2[:, 2] < b2[:, 0]) | (b2[:, 3] < b2[:, 1])
    if flipped.any():
        raise InputError(f"box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1; got {b2[flipped][0].tolist()}.")
    h, w = hw
    outside = (b2[:, [0, 2]] < 0).any(1) | (b2[:, [0, 2]] > w).any(1) | (b2[:, [1, 3]] < 0).any(1) | (b2[:, [1, 3]] > h).any(1)
    if outside.any():
        raise InputError(f"box outside the {w}x{h} image: {b2[outside][0].tolist()}. Clip it to the image first.")
    return b


def check_mask_input(mask: object, size: tuple[int, int], batch: int | None = None) -> np.ndarray:
    """Low-resolution logits from an earlier prediction: (1, 256, 256) [or (B, 1, 256, 256)]."""
    m = _as_float_array(mask, "mask_input")
    want = (1, *size) if batch is None else (batch, 1, *size)
    if m.shape != want:
        raise InputError(
            f"mask_input must have shape {want} (the low-res logits returned by predict); got {m.shape}."
        )
    return m


BOX_PRIOR_LOGIT = 4.0


def box_prior_logits(boxes, prompt_size: int, size: tuple[int, int] = (256, 256)):
    """Boxes (B x 4, prompt frame) as low-resolution mask logits (B x 1 x h x w): +4 on the cells whose
    centres lie inside the box, -4 elsewhere. Models trained with ``box_mask_prior`` (swiftsam's own)
    receive this as their mask input with every box prompt, a prior that they refine."""
    import torch

    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    h, w = size
    ys = (torch.arange(h, dtype=torch.float32, device=boxes.device) + 0.5) * (prompt_size / h)
    xs = (torch.arange(w, dtype=torch.float32, device=boxes.device) + 0.5) * (prompt_size / w)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    inside = ((ys >= y0) & (ys <= y1))[:, :, None] & ((xs >= x0) & (xs <= x1))[:, None, :]
    return torch.where(inside, BOX_PRIOR_LOGIT, -BOX_PRIOR_LOGIT)[:, None]
