"""Losses: embedding distillation, SAM's mask losses (focal + dice + IoU regression)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..masks import mask_iou


def embedding_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """huber (NanoSAM's default, delta 1), mse or l1; the student's map is resized to the teacher's."""
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, teacher.shape[-2:], mode="bilinear", align_corners=False)
    fn = {"huber": F.huber_loss, "mse": F.mse_loss, "l1": F.l1_loss}[kind]
    return fn(student.float(), teacher.float())


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask sigmoid focal loss (mean over pixels): ... x H x W -> ..."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss: ... x H x W -> ..."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def logits_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded logits with a binary target, per mask (no gradient; ``masks.mask_iou``'s rule)."""
    with torch.no_grad():
        return mask_iou(logits > 0, target > 0.5)


def sam_mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, focal_weight: float = 20.0,
                  dice_weight: float = 1.0, iou_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's loss on N prompts x M candidate masks: focal:dice 20:1 plus MSE between the predicted and
    the actual IoU, backpropagated through the best candidate per prompt (the lowest mask loss).
    logits N x M x H x W, iou_pred N x M, target N x H x W. Returns (loss, chosen candidate index)."""
    t = target[:, None].expand_as(logits)
    per = focal_weight * focal_loss(logits, t) + dice_weight * dice_loss(logits, t)
    best = per.argmin(dim=1)
    rows = torch.arange(len(logits))
    iou_target = logits_iou(logits[rows, best], target)
    loss = per[rows, best].mean() + iou_weight * F.mse_loss(iou_pred[rows, best], iou_target)
    return loss, best
