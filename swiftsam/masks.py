"""Binary masks: COCO RLE encoding and decoding, and mask IoU. One home for everything mode, evaluation,
training and packing, so that their RLEs are the same bytes and their IoUs follow the same rule.

RLEs are pycocotools' compressed form with ``counts`` as a str (JSON-ready); ``uncompressed_rle`` is SAM's
run-length list. Every function here also accepts ``counts`` as bytes, as pycocotools returns them.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from pycocotools import mask as mask_utils

Masks = Union[np.ndarray, torch.Tensor]


def encode_rle(masks: np.ndarray) -> list[dict]:
    """COCO RLEs (compressed, ``counts`` as str) of N x H x W boolean masks."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def encode_mask(mask: np.ndarray) -> dict:
    """The COCO RLE (compressed, ``counts`` as str) of one H x W boolean mask."""
    return encode_rle(np.asarray(mask)[None])[0]


def _coco(rle: dict) -> dict:
    """``rle`` as pycocotools' C functions take it: compressed, ``counts`` as bytes."""
    if isinstance(rle["counts"], list):
        return mask_utils.frPyObjects(rle, *rle["size"])
    if isinstance(rle["counts"], str):
        return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """H x W boolean mask of a COCO RLE (compressed or uncompressed)."""
    return mask_utils.decode(_coco(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    """The number of foreground pixels of a COCO RLE."""
    return int(mask_utils.area(_coco(rle)))


def rle_bbox(rle: dict) -> list[float]:
    """The XYWH box of a COCO RLE's foreground (COCO's ``bbox``; [0, 0, 0, 0] when empty)."""
    return [float(v) for v in mask_utils.toBbox(_coco(rle))]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """SAM's ``uncompressed_rle``: column-major run lengths, starting with a run of zeros."""
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def mask_iou(a: Masks, b: Masks) -> float | np.ndarray | torch.Tensor:
    """Intersection over union of boolean masks, over their last two axes (leading axes broadcast).

    The rule, for every caller (evaluation, agreement between models, training's IoU target): **two empty
    masks have IoU 1**. They are the same mask, and IoU is a similarity, so ``mask_iou(m, m) == 1`` holds for
    every ``m``; an empty prediction of an empty target is exactly right, and two models that both find
    nothing agree. (pycocotools' ``iou`` says 0 there; COCOeval's AP, computed by pycocotools itself, is not
    affected. With a non-empty mask on either side the union is never 0, so only this case depends on it.)

    numpy (or lists): a float for one pair, a float64 array for a batch; torch: a float32 tensor.
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a, dtype=torch.bool), torch.as_tensor(b, dtype=torch.bool)
        inter = (a & b).flatten(-2).sum(-1).float()
        union = (a | b).flatten(-2).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    inter = np.count_nonzero(a & b, axis=(-2, -1))
    union = np.count_nonzero(a | b, axis=(-2, -1))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(iou) if iou.ndim == 0 else iou
