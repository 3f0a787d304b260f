"""The three things ``swiftsam bench`` times, for swiftsam and for the authors' reference code.

- encoder: a batch of normalised, padded images -> embeddings;
- decoder: one image embedding, ``n`` box prompts -> low-res logits and IoU predictions;
- pipeline: a batch of uint8 RGB images and one box each -> binary masks at the original size,
  preprocessing (resize, normalise, pad) and postprocessing (upsample, crop, threshold) included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..engines.base import Engine
from ..modeling.sam import Sam
from ..transforms import postprocess_masks, to_prompt_frame

Workload = Callable[[], object]


def example_boxes(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` reproducible boxes (x0, y0, x1, y1) inside an image of ``size`` (H, W)."""
    h, w = size
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n, 2, 2)) * [w - 1, h - 1]
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)


def box_prompts(boxes: np.ndarray, sizes: Sequence[tuple[int, int]], prompt_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in pixels (one per image size) -> flat prompt (coords B x 2 x 2, labels B x 2)."""
    coords = np.stack([to_prompt_frame(b.reshape(2, 2), s, prompt_size) for b, s in zip(boxes, sizes)])
    labels = np.tile(np.array([[2.0, 3.0]]), (len(boxes), 1))
    return torch.as_tensor(coords, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.float32)


class SwiftsamWorkloads:
    """Workloads for one swiftsam model run by one engine."""

    def __init__(self, model: Sam, engine: Engine) -> None:
        self.model = model
        self.engine = engine

    def encoder(self, batch: torch.Tensor) -> Workload:
        return lambda: self.engine.encode(batch)

    def decoder(self, embedding: torch.Tensor, boxes: np.ndarray, image_size: tuple[int, int]) -> Workload:
        n = len(boxes)
        coords, labels = box_prompts(boxes, [image_size] * n, self.model.spec.prompt_size)
        mask = torch.zeros((n, 1, *self.model.prompt_encoder.mask_input_size))
        has_mask = torch.zeros(n)
        return lambda: self.engine.decode(embedding, coords, labels, mask, has_mask)

    def segment(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> list[torch.Tensor]:
        model, spec = self.model, self.model.spec
        x = torch.cat([model.preprocess(im)[0] for im in images])
        emb = self.engine.encode(x)
        sizes = [im.shape[:2] for im in images]
        coords, labels = box_prompts(boxes, sizes, spec.prompt_size)
        n = len(images)
        mask = torch.zeros((n, 1, *model.prompt_encoder.mask_input_size))
        low, _ = self.engine.decode(emb, coords, labels, mask, torch.zeros(n))
        return [postprocess_masks(low[i:i + 1, :1], s, spec.prompt_size)[0, 0] > model.mask_threshold
                for i, s in enumerate(sizes)]

    def pipeline(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Workload:
        return lambda: self.segment(images, boxes)
