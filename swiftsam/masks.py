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

from .errors import InputError

Masks = Union[np.ndarray, torch.Tensor]


def encode_rle(masks: Masks) -> list[dict]:
    """COCO RLEs (compressed, ``counts`` as str) of N x H x W boolean masks.

    A torch tensor on an accelerator is encoded there (``encode_rle_torch``), so only the RLE strings come
    back; one in host memory goes to pycocotools like an array (the same bytes, and faster on a CPU).
    """
    if isinstance(masks, torch.Tensor):
        if masks.device.type != "cpu":
            return encode_rle_torch(masks)
        masks = masks.detach().numpy()
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def encode_rle_torch(masks: torch.Tensor) -> list[dict]:
    """COCO RLEs of an N x H x W bool (or 0/1) tensor, computed on its device: the same bytes as ``encode_rle``.

    COCO RLEs run down columns and start with a run of zeros (of length 0 when the first pixel is set). The
    run lengths and their compressed string (pycocotools' ``rleToString``: each count, less the count two
    before it from the fourth on, as signed 5-bit groups, low first, +48, bit 0x20 = "more follows") are
    computed with tensor ops, so only the strings' bytes and their lengths leave the device.
    """
    if masks.ndim != 3:
        raise InputError(f"masks must be N x H x W, got a tensor of shape {tuple(masks.shape)}; "
                         "add a leading axis for a single mask (mask[None]).")
    n, h, w = masks.shape
    if n == 0:
        return []
    dev, size = masks.device, h * w
    flat = masks.transpose(1, 2).reshape(n, size)  # column-major pixel order (copies if not contiguous)
    flat = flat if flat.dtype == torch.bool else flat != 0
    # a run ends before every pixel that differs from the previous one (a set first pixel ends a zero run)
    change = flat.clone()
    change[:, 1:] ^= flat[:, :-1]
    m_idx, pos = change.nonzero(as_tuple=True)  # sorted by mask, then position
    del change, flat
    runs = torch.bincount(m_idx, minlength=n) + 1  # per mask: one run more than it has changes
    first = torch.cumsum(runs, 0) - runs  # index of each mask's first run
    ends = torch.full((int(m_idx.numel()) + n,), size, dtype=torch.int64, device=dev)
    ends[torch.arange(m_idx.numel(), device=dev) + m_idx] = pos
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    starts[first] = 0
    counts = ends - starts
    run_mask = torch.repeat_interleave(torch.arange(n, device=dev), runs)
    local = torch.arange(counts.numel(), device=dev) - first[run_mask]
    x = counts.clone()
    x[2:] -= torch.where(local[2:] > 2, counts[:-2], 0)
    # signed 5-bit groups: |x| <= size, so `width` groups always suffice
    width = 1
    while (1 << (5 * width - 1)) <= size:
        width += 1
    # each count takes the fewest groups k that hold it as a 5k-bit signed number
    k = torch.ones_like(x)
    for bits in range(5, 5 * width, 5):
        k += (x < -(1 << (bits - 1))) | (x >= 1 << (bits - 1))
    shifts = torch.arange(width, device=dev)
    groups = (x[:, None] >> shifts * 5) & 0x1F  # arithmetic shift: negative deltas sign-extend
    written, more = shifts < k[:, None], shifts < k[:, None] - 1
    chars = (groups | more.to(torch.int64) << 5) + 48
    data = chars[written].to(torch.uint8).cpu().numpy().tobytes()
    lengths = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, run_mask, k).tolist()
    rles, at = [], 0
    for length in lengths:
        rles.append({"size": [h, w], "counts": data[at: at + length].decode("ascii")})
        at += length
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
