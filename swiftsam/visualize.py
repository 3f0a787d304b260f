"""Overlays and label images for masks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array(
    [[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211],
     [0, 206, 209], [255, 140, 0], [220, 20, 60], [124, 252, 0], [255, 105, 180]],
    dtype=np.float32,
)


def label_image(masks: np.ndarray) -> np.ndarray:
    """N x H x W booleans -> H x W uint8 (0 background; object k has value k, or 255 if N == 1).

    Later objects are drawn over earlier ones.
    """
    if masks.shape[0] > 254:
        raise ValueError("at most 254 objects fit an 8-bit label image")
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for k, m in enumerate(masks, start=1):
        out[m] = 255 if masks.shape[0] == 1 else k
    return out


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
