"""Overlays and label images for masks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211],
     [0, 206, 209], [255, 140, 0], [220, 20, 60], [124, 252, 0], [255, 105, 180]],
    dtype=np.float32,
)


MAX_LABELS = 65535  # objects a 16-bit label PNG can hold


def label_image(masks: np.ndarray) -> np.ndarray:
    """N x H x W booleans -> H x W labels: 0 background; object k has value k (255 if N == 1).

    Later objects are drawn over earlier ones: a pixel that several masks cover holds the last of them
    (see :func:`hidden_objects`). uint8 for up to 255 objects, uint16 beyond (a 16-bit PNG).
    """
    n = masks.shape[0]
    if n > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} objects fit a 16-bit label image, got {n}")
    out = np.zeros(masks.shape[1:], dtype=np.uint8 if n <= 255 else np.uint16)
    for k, m in enumerate(masks, start=1):
        out[m] = 255 if n == 1 else k
    return out


def hidden_objects(masks: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """How many objects lost pixels to later overlapping objects in ``labels`` (from :func:`label_image`),
    and how many of those lost all of them: (lost pixels, entirely hidden)."""
    n = masks.shape[0]
    if n < 2:
        return 0, 0
    kept = np.bincount(labels.ravel(), minlength=n + 1)[1:n + 1]  # label k is only ever drawn inside mask k
    area = masks.reshape(n, -1).sum(axis=1)
    short = kept < area
    return int(short.sum()), int((short & (kept == 0)).sum())


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    points: list[tuple[float, float, int]] = (),
    boxes: list[tuple[float, float, float, float]] = (),
    alpha: float = 0.5,
) -> Image.Image:
    """Blend coloured masks over the image and draw the prompts (green +, red x, box outlines)."""
    canvas = image.astype(np.float32)
    for k, m in enumerate(masks):
        colour = PALETTE[k % len(PALETTE)]
        canvas[m] = (1 - alpha) * canvas[m] + alpha * colour
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    r = max(3, round(min(image.shape[:2]) / 100))
    for x, y, label in points:
        colour = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255), fill=colour)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        draw.rectangle([x0, y0, x1, y1], outline=tuple(int(c) for c in PALETTE[k % len(PALETTE)]), width=max(2, r // 2))
    return out
