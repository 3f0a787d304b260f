"""The RITM clicker used by EfficientViT-SAM's point protocol (and SAM's point sampling).

Each click goes to the pixel farthest from the boundary of the larger error region: a missed part
of the object (false negative) gets a positive click, a wrongly included part (false positive) a
negative one. Distances are L2 distance transforms of the error masks padded by one pixel, so the
image border counts as boundary; pixels already clicked are never chosen again. "Larger" is RITM's
measure: the region with the deeper interior point wins (false negatives only when strictly deeper),
not the one with more pixels. Ties go to the first pixel in row-major order.
"""

from __future__ import annotations

import numpy as np

from ..optional import require


def _distance(mask: np.ndarray) -> np.ndarray:
    cv2 = require("cv2", "the point protocol's clicker (distance transform)")

    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


class Clicker:
    def __init__(self, gt_mask: np.ndarray) -> None:
        self.gt = np.asarray(gt_mask, bool)
        self.unclicked = np.ones_like(self.gt)
        self.points: list[tuple[float, float]] = []  # (x, y)
        self.labels: list[int] = []

    def next_click(self, predicted: np.ndarray) -> tuple[int, int, int]:
        """Add and return the next click (x, y, label) for the current prediction."""
        predicted = np.asarray(predicted, bool)
        fn = _distance(self.gt & ~predicted) * self.unclicked
        fp = _distance(~self.gt & predicted) * self.unclicked
        positive = fn.max() > fp.max()
        dist = fn if positive else fp
        ys, xs = np.nonzero(dist == dist.max())
        y, x = int(ys[0]), int(xs[0])  # first in row-major order, as the reference
        self.unclicked[y, x] = False
        self.points.append((float(x), float(y)))
        self.labels.append(int(positive))
        return x, y, int(positive)
