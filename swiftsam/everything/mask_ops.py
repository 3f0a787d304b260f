"""Point grids, crop layers and per-mask operations of automatic mask generation.

The conventions follow ``SamAutomaticMaskGenerator`` so that records are interchangeable: grids are
cell centres in [0, 1]; boxes are XYXY with the inclusive last pixel (an empty mask gives 0,0,0,0);
record ``bbox`` is XYWH computed from those boxes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..masks import decode_rle, encode_rle, rle_area, uncompressed_rle  # noqa: F401  (the generator's RLEs)
from ..optional import require


def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) at the centres of an n x n grid of cells over [0, 1]^2, x varying fastest."""
    if n_per_side < 1:
        raise ValueError(f"points per side must be >= 1, got {n_per_side}")
    side = (np.arange(n_per_side) + 0.5) / n_per_side
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``n_per_side / downscale**i`` points per side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """XYXY crops: the whole image (layer 0), then 2^i x 2^i overlapping crops in layer i."""
    h, w = hw
    boxes, layers = [[0, 0, w, h]], [0]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        cw = math.ceil((overlap * (per_side - 1) + w) / per_side)
        ch = math.ceil((overlap * (per_side - 1) + h) / per_side)
        x0s = [int((cw - overlap) * i) for i in range(per_side)]
        y0s = [int((ch - overlap) * i) for i in range(per_side)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
                layers.append(layer)
    return boxes, layers


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks binarised at ``threshold + offset`` and ``threshold - offset``, per mask."""
    inter = (logits > threshold + offset).sum(dim=(-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum(dim=(-1, -2), dtype=torch.int32)
    return inter / union


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (inclusive last pixel) of N x H x W boolean masks; 0,0,0,0 for an empty mask."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(cols.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def near_crop_edge(boxes: torch.Tensor, crop: list[int], image_box: list[int], atol: float = 20.0) -> torch.Tensor:
    """Boxes (in crop coordinates) touching a crop edge that is not also an image edge."""
    crop_t = torch.as_tensor(crop, dtype=torch.float32, device=boxes.device)
    image_t = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    shifted = boxes.float() + torch.as_tensor([crop[0], crop[1], crop[0], crop[1]], device=boxes.device)
    at_crop = torch.isclose(shifted, crop_t[None], atol=atol, rtol=0)
    at_image = torch.isclose(shifted, image_t[None], atol=atol, rtol=0)
    return (at_crop & ~at_image).any(dim=1)


def remove_small_regions(mask: np.ndarray, min_area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area`` pixels.

    Returns the new mask and whether it changed. An island mask made only of small islands keeps its
    largest one.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    cv2 = require("cv2", "removing small mask regions (min_mask_region_area > 0)")
    holes = mode == "holes"
    working = (mask ^ holes).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = [i + 1 for i, s in enumerate(sizes) if s < min_area]
    if not small:
        return mask, False
    if holes:
        fill = [0] + small  # background of the inverted mask plus the small holes
    else:
        fill = [i for i in range(1, n) if i not in small]
        if not fill:
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, fill), True
