"""Mask IoU and the size-binned mIoU both references report."""

from __future__ import annotations

import numpy as np

from ..masks import mask_iou  # noqa: F401  (the one IoU rule: two empty masks have IoU 1)

SMALL, LARGE = 32**2, 96**2


def size_bins(area: float) -> list[str]:
    """COCO size classes by annotation ``area``, bounds inclusive as in both references' filters:
    small <= 32^2, 32^2 <= medium <= 96^2, large >= 96^2 (an area on a bound counts in both)."""
    bins = ["all"]
    if area <= SMALL:
        bins.append("small")
    if SMALL <= area <= LARGE:
        bins.append("medium")
    if area >= LARGE:
        bins.append("large")
    return bins


def miou_table(rows: list[dict], key: str = "iou") -> dict[str, dict[str, float]]:
    """{bin: {"miou": mean, "count": n}} over rows with ``area`` and ``key``."""
    sums: dict[str, list[float]] = {b: [] for b in ("all", "small", "medium", "large")}
    for r in rows:
        for b in size_bins(r["area"]):
            sums[b].append(r[key])
    return {b: {"miou": float(np.mean(v)) if v else float("nan"), "count": len(v)} for b, v in sums.items()}
