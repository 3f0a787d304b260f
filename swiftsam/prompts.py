"""User prompts: their validation in original-image pixels, and ``PromptBatch``, the one form every decoder
call takes (SAM's flat prompt format in the prompt frame), built here from pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .modeling.prompt_decoder import flatten_prompts
from .modeling.stages import PROMPT_INPUTS
from .transforms import to_prompt_frame

VALID_LABELS = (-1, 0, 1)  # -1: padding, 0: background click, 1: foreground click
TORCH_LABELS = (-1, 0, 1, 2, 3)  # predict_torch also takes box corners as points (as SAM's prompt encoder)
_LABEL_NAMES = {1: "1 (foreground)", 0: "0 (background)", 2: "2 (box top-left)", 3: "3 (box bottom-right)"}


def as_float_array(x: object, what: str) -> np.ndarray:
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
    c = as_float_array(coords, "point_coords")
    shape = "(B, N, 2)" if batched else "(N, 2)"
    if c.ndim != (3 if batched else 2) or c.shape[-1] != 2 or c.shape[-2] == 0:
        raise InputError(f"point_coords must have shape {shape} as x, y pixels; got shape {c.shape}.")
    if labels is None:
        raise InputError("point_labels are required with point_coords: 1 = foreground, 0 = background.")
    lab = as_float_array(labels, "point_labels")
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
    b = as_float_array(box, "box")
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
    m = as_float_array(mask, "mask_input")
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
            m = torch.as_tensor(as_float_array(m, "mask_input"))
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


def _contract(model):
    """A model's contract (``Sam.contract``), or the contract itself."""
    return getattr(model, "contract", model)


@dataclass(frozen=True, eq=False)
class PromptBatch:
    """B prompts in SAM's flat format, in the prompt frame: what ``Predictor.decode`` (and every engine's
    decoder) takes. Fields in the ABI's order (``modeling.stages.PROMPT_INPUTS``):

    * ``point_coords`` B x N x 2 float32, x, y in the prompt frame;
    * ``point_labels`` B x N float32: 1 / 0 foreground / background click, 2 / 3 a box's top-left /
      bottom-right corner, -1 padding ("not a point");
    * ``mask_input`` B x 1 x h x w low-resolution logits (zeros when there is none);
    * ``has_mask_input`` B float32, 1.0 where ``mask_input`` counts.

    Build it with ``from_pixels`` (prompts in original-image pixels, checked as ``Predictor.predict`` checks
    them) or ``from_frame`` (tensors already in the prompt frame): both scale, add the box corners and the
    padding point, and give box prompts the box mask prior of models trained with it, in one place.
    """

    point_coords: torch.Tensor
    point_labels: torch.Tensor
    mask_input: torch.Tensor
    has_mask_input: torch.Tensor

    def __len__(self) -> int:
        return self.point_coords.shape[0]

    def __getitem__(self, index: slice) -> PromptBatch:
        """The prompts at ``index`` (a slice), e.g. to decode a large batch in chunks."""
        return PromptBatch(*(t[index] for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The four prompt tensors in the ABI's order, as ``Engine.decode`` takes them after the embedding."""
        return tuple(getattr(self, name) for name in PROMPT_INPUTS)

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(*(t.to(device) for t in self.tensors()))

    @staticmethod
    def cat(parts: Sequence[PromptBatch]) -> PromptBatch:
        """One batch of several (their points padded to the longest with -1 labels)."""
        n = max(p.point_coords.shape[1] for p in parts)
        coords, labels = [], []
        for p in parts:
            pad = n - p.point_coords.shape[1]
            coords.append(torch.nn.functional.pad(p.point_coords, (0, 0, 0, pad)))
            labels.append(torch.nn.functional.pad(p.point_labels, (0, pad), value=-1.0))
        return PromptBatch(torch.cat(coords), torch.cat(labels), torch.cat([p.mask_input for p in parts]),
                           torch.cat([p.has_mask_input for p in parts]))

    @classmethod
    def from_pixels(cls, model, original_size: tuple[int, int], point_coords: object = None,
                    point_labels: object = None, boxes: object = None, mask_input: object = None, *,
                    device: torch.device | str = "cpu") -> PromptBatch:
        """B prompts in pixels of an image of ``original_size`` (H, W): points (B, N, 2) with labels (B, N)
        (1 / 0), boxes (B, 4) as x0, y0, x1, y1, the low-res logits of earlier predictions (B, 1, h, w), any
        combination. ``model``: a ``Sam`` or its contract (prompt frame, mask-input size, box mask prior).
        Bad prompts raise InputError, saying what is wrong."""
        if point_coords is None and point_labels is not None:
            raise InputError("point_labels were given without point_coords.")
        if point_coords is None and boxes is None and mask_input is None:
            raise InputError("empty prompt: give at least one point (with its label), a box or a mask_input.")
        contract = _contract(model)
        ps = contract.image.prompt_size
        coords_t = labels_t = boxes_t = mask_t = None
        sizes = []
        if point_coords is not None:
            c, lab = check_points(point_coords, point_labels, original_size, batched=True)
            coords_t = torch.as_tensor(to_prompt_frame(c, original_size, ps, contract.image.geometry), dtype=torch.float32,
                                       device=device)
            labels_t = torch.as_tensor(lab, dtype=torch.float32, device=device)
            sizes.append(c.shape[0])
        if boxes is not None:
            b = check_boxes(boxes, original_size, batched=True)
            b = to_prompt_frame(b.reshape(-1, 2, 2), original_size, ps, contract.image.geometry).reshape(-1, 4)
            boxes_t = torch.as_tensor(b, dtype=torch.float32, device=device)
            sizes.append(b.shape[0])
        if mask_input is not None:
            m = np.asarray(mask_input)
            m = m[:, None] if m.ndim == 3 else m
            m = check_mask_input(m, tuple(contract.mask_input_size), batch=m.shape[0] if m.ndim else 0)
            mask_t = torch.as_tensor(m, dtype=torch.float32, device=device)
            sizes.append(m.shape[0])
        if len(set(sizes)) > 1:
            raise InputError(f"prompt batches differ in size (points, boxes, masks): {sizes}; "
                             f"give one of each per prompt.")
        return cls.from_frame(contract, coords_t, labels_t, boxes_t, mask_t, device=device)

    @classmethod
    def from_frame(cls, model, point_coords: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                   boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None, *,
                   device: torch.device | str = "cpu") -> PromptBatch:
        """Prompts already in the prompt frame and checked (``check_prompt_tensors``): points (B, N, 2) with
        labels (B, N), boxes (B, 4), mask_input (B, 1, h, w). Points come first, then the box corners; points
        without a box get one padding point (as SAM's prompt encoder; SAM 2's order with the contract's
        ``box_as_points``: ``flatten_prompts``); a prompt without a mask input gets zeros
        (has_mask_input 0) or, for a model trained with the box mask prior, its box as prior logits (1)."""
        point_coords, point_labels, boxes, mask_input = (
            None if t is None else torch.as_tensor(t) for t in (point_coords, point_labels, boxes, mask_input))
        sizes = [t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None]
        if not sizes:
            raise InputError("empty prompt: give at least one point (with its label), a box or a mask_input.")
        contract = _contract(model)
        batch = sizes[0]
        coords, labels = flatten_prompts(point_coords, point_labels, boxes, batch, device, contract.box_as_points)
        size = tuple(contract.mask_input_size)
        if mask_input is not None:
            mask, has_mask = mask_input.to(device, torch.float32), torch.ones(batch, device=device)
        elif boxes is not None and contract.box_mask_prior:
            mask = box_prior_logits(boxes.to(device, torch.float32), contract.image.prompt_size, size)
            has_mask = torch.ones(batch, device=device)
        else:
            mask, has_mask = torch.zeros((batch, 1, *size), device=device), torch.zeros(batch, device=device)
        return cls(coords, labels, mask, has_mask)
