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
from ..modeling.features import ImageFeatures
from ..modeling.prompt_decoder import choose_outputs
from ..modeling.sam import Sam
from ..predictor import Predictor
from ..prompts import PromptBatch
from ..transforms import postprocess_masks

Workload = Callable[[], object]


def example_boxes(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` reproducible boxes (x0, y0, x1, y1) inside an image of ``size`` (H, W)."""
    h, w = size
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n, 2, 2)) * [w - 1, h - 1]
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)


class SwiftsamWorkloads:
    """Workloads for one swiftsam model run by one engine, through a Predictor on that engine: the same prompt
    batches, decoder call and output policy as ``Predictor.predict_batch``."""

    def __init__(self, model: Sam, engine: Engine) -> None:
        self.model = model
        self.engine = engine
        self.predictor = Predictor(model, engine=engine)

    def box_prompts(self, boxes: np.ndarray, sizes: Sequence[tuple[int, int]]) -> PromptBatch:
        """Boxes in pixels, one per image size -> one PromptBatch (box corners, and the box mask prior of
        models trained with it)."""
        dev = self.predictor.device
        if len(set(map(tuple, sizes))) == 1:
            return PromptBatch.from_pixels(self.model, tuple(sizes[0]), boxes=boxes, device=dev)
        return PromptBatch.cat([PromptBatch.from_pixels(self.model, s, boxes=b[None], device=dev)
                                for b, s in zip(boxes, sizes)])

    def encoder(self, batch: torch.Tensor) -> Workload:
        return lambda: self.engine.encode(batch)

    def decoder(self, embedding: torch.Tensor, boxes: np.ndarray, image_size: tuple[int, int]) -> Workload:
        prompts = self.box_prompts(boxes, [image_size] * len(boxes))
        features = self.engine.adopt(ImageFeatures.of(embedding))  # as set_image leaves them for this engine
        return lambda: self.predictor.decode(prompts, features=features)

    def segment(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> list[torch.Tensor]:
        """One box per image -> its single-mask output (the output policy's "single") at the image's size."""
        model, spec = self.model, self.model.spec
        x = torch.cat([model.preprocess(im)[0] for im in images])
        emb = self.engine.encode(x)
        sizes = [im.shape[:2] for im in images]
        low, iou = self.predictor.decode(self.box_prompts(boxes, sizes), features=emb)
        low, _ = choose_outputs(low, iou, "single", **model.contract.output_policy())
        return [postprocess_masks(low[i:i + 1], s, spec.prompt_size, spec.geometry)[0, 0] > model.mask_threshold
                for i, s in enumerate(sizes)]

    def pipeline(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Workload:
        return lambda: self.segment(images, boxes)
