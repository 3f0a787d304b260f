"""Validation of user prompts (points, labels, boxes, mask inputs) in original-image pixels."""

from __future__ import annotations

import numpy as np

from .errors import InputError

VALID_LABELS = (-1, 0, 1)  # -1: padding, 0: background click, 1: foreground click
TORCH_LABELS = (-1, 0, 1, 2, 3)  # predict_torch also takes box corners as points (as SAM's prompt encoder)
_LABEL_NAMES = {1: "1 (foreground)", 0: "0 (background)", 2: "2 (box top-left)", 3: "3 (box bottom-right)"}


def _as_float_array(x: object, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numeric, got {x!r}.") from None
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contains NaN or infinite values.")
    return a


def check_points(coords: object, labels: object, hw: tuple[int, int], batched: bool = False, *,
                 allowed_labels: tuple[int, ...] = VALID_LABELS, frame: str = "image", tol: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Points as (N, 2) [or (B, N, 2)] x, y pixels inside the image; labels (N,) [or (B, N)].

    ``frame`` names the ``hw`` frame in messages; ``tol`` pixels of slack at its edges."""
    c = _as_float_array(coords, "point_coords")
    shape = "(B, N, 2)" if batched else "(N, 2)"
    if c.ndim != (3 if batched else 2) or c.shape[-1] != 2 or c.shape[-2] == 0:
        raise InputError(f"point_coords must have shape {shape} as x, y pixels; got shape {c.shape}.")
    if labels is None:
        raise InputError("point_labels are required with point_coords: 1 = foreground, 0 = background.")
    lab = _as_float_array(labels, "point_labels")
    if lab.shape != c.shape[:-1]:
        raise InputError(f"point_labels must have shape {c.shape[:-1]} to match point_coords; got {lab.shape}.")
    if not np.all(np.isin(lab, allowed_labels)):
        names = [_LABEL_NAMES[k] for k in sorted(allowed_labels, key=lambda k: (k < 0, k != 1, k)) if k in _LABEL_NAMES]
        raise InputError(f"point_labels must be {', '.join(names[:-1])} or {names[-1]}; got {np.unique(lab).tolist()}.")
    h, w = hw
    outside = (c[..., 0] < -tol) | (c[..., 0] > w + tol) | (c[..., 1] < -tol) | (c[..., 1] > h + tol)
    if outside.any():
        bad = c[outside][:3].tolist()
        raise InputError(f"points outside the {w}x{h} {frame} (x in 0..{w}, y in 0..{h}): {bad}.")
    return c, lab.astype(np.int64)


def check_boxes(box: object, hw: tuple[int, int], batched: bool = False, *, frame: str = "image",
                tol: float = 0.0) -> np.ndarray:
    """Boxes as x0, y0, x1, y1 pixels inside the image: (4,) [or (B, 4)]. ``frame``, ``tol``: as check_points."""
    b = _as_float_array(box, "box")
    if (batched and (b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0)) or (not batched and b.shape != (4,)):
        want = "(B, 4)" if batched else "(4,)"
        raise InputError(f"box must have shape {want} as x0, y0, x1, y1 pixels; got shape {b.shape}.")
    b2 = b.reshape(-1, 4)
    flipped = (b2[:, 2] < b2[:, 0]) | (b2[:, 3] < b2[:, 1])
    if flipped.any():
        raise InputError(f"box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1; got {b2[flipped][0].tolist()}.")
    h, w = hw
    outside = ((b2[:, [0, 2]] < -tol).any(1) | (b2[:, [0, 2]] > w + tol).any(1)
               | (b2[:, [1, 3]] < -tol).any(1) | (b2[:, [1, 3]] > h + tol).any(1))
    if outside.any():
        raise InputError(f"box outside the {w}x{h} {frame}: {b2[outside][0].tolist()}. Clip it to the image first.")
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


def check_prompt_tensors(point_coords: object, point_labels: object, boxes: object, mask_input: object,
                         frame_hw: tuple[int, int], mask_size: tuple[int, int]) -> int:
    """Check ``Predictor.predict_torch``'s prompts as ``predict`` checks its own: points (B, N, 2) with labels
    (B, N), boxes (B, 4), mask_input (B, 1, 256, 256); finite numbers; points and boxes inside the image as
    resized into the prompt frame (``frame_hw``, H x W), where predict_torch takes them. Returns B."""
    import torch

    def cpu(t: object) -> object:
        return t.detach().to("cpu", torch.float64).numpy() if isinstance(t, torch.Tensor) else t

    frame = "image in the prompt frame (predict_torch takes transformed coordinates; predict takes pixels)"
    sizes = []
    if point_coords is None and point_labels is not None:
        raise InputError("point_labels were given without point_coords.")
    if point_coords is not None:
        c, _ = check_points(cpu(point_coords), cpu(point_labels), frame_hw, batched=True,
                            allowed_labels=TORCH_LABELS, frame=frame, tol=1e-3)
        sizes.append(c.shape[0])
    if boxes is not None:
        sizes.append(check_boxes(cpu(boxes), frame_hw, batched=True, frame=frame, tol=1e-3).shape[0])
    if mask_input is not None:
        m = mask_input
        if not isinstance(m, torch.Tensor):
            m = torch.as_tensor(_as_float_array(m, "mask_input"))
        want = (sizes[0] if sizes else m.shape[0], 1, *mask_size)
        if tuple(m.shape) != want:
            raise InputError(f"mask_input must have shape {want} (the low-res logits returned by predict); "
                             f"got {tuple(m.shape)}.")
        if not bool(torch.isfinite(m).all()):
            raise InputError("mask_input contains NaN or infinite values.")
        sizes.append(m.shape[0])
    if not sizes:
        raise InputError("empty prompt: give at least one point (with its label), a box or a mask_input.")
    if len(set(sizes)) > 1:
        raise InputError(f"prompt batches differ in size (points, boxes, masks): {sizes}; give one of each per prompt.")
    return sizes[0]


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
