"""Greedy non-maximum suppression on XYXY boxes, per group (no torchvision needed)."""

from __future__ import annotations

import numpy as np
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of N XYXY boxes (width x height, no +1: the torchvision convention)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """N x M IoU of XYXY boxes ``a`` (N x 4) and ``b`` (M x 4); 0 where both boxes are empty."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, highest score first.

    A box is dropped when its IoU with a higher-scoring kept box is strictly above ``iou_threshold``.
    Equal scores keep their input order. Memory is O(N): one row of IoUs per kept box.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be N x 4 (XYXY), got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    b = boxes.detach().double().cpu()[order].numpy()
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    alive = np.ones(n, bool)
    keep = []
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, n)
        lt = np.maximum(b[i, :2], b[rest, :2])
        rb = np.minimum(b[i, 2:], b[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        union = area[i] + area[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        alive[rest] &= ~(iou > iou_threshold)
    return order[torch.as_tensor(keep, dtype=torch.int64)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each group (boxes of different groups never suppress each other).

    Returns the kept indices, highest score first. Groups are separated by shifting each group's
    boxes to a region of its own, so one pass handles them all.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    if groups.shape != boxes.shape[:1]:
        raise ValueError(f"groups must have shape ({boxes.shape[0]},), got {tuple(groups.shape)}")
    b = boxes.detach().double().cpu()
    span = float(b.max() - min(0.0, float(b.min()))) + 1.0
    shifted = b + (groups.detach().cpu().double() * span)[:, None]
    return nms(shifted, scores, iou_threshold)
