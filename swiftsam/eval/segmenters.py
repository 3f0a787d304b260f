"""What an evaluation runs: a swiftsam Predictor, or a baseline with the same two methods.

``set_image(image, image_id)`` then ``boxes(xyxy (K, 4), candidates)`` or ``clicks(points (K, N, 2),
labels (K, N), candidates)``, each returning masks (K, H, W) bool and scores (K,). A segmenter that can take
its previous answer back (SAM's iterative prompting) also returns, from ``clicks``, the low-res logits of the
chosen masks (K, 1, 256, 256) and accepts them as ``clicks(..., mask_input=logits)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..optional import require
from ..predictor import Predictor


class PredictorSegmenter:
    """A swiftsam Predictor as a segmenter: boxes and clicks go through ``Predictor.predict_best`` (the one prompt
    path and output policy)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.name = predictor.model.zoo_name or "model"

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        self.predictor.set_image(image)

    def boxes(self, boxes: np.ndarray, candidates: str) -> tuple[np.ndarray, np.ndarray]:
        """Per box the output the model rates best among ``candidates`` (``Predictor.predict_best``)."""
        return self.predictor.predict_best(boxes=boxes, candidates=candidates)

    def clicks(self, points: np.ndarray, labels: np.ndarray, candidates: str, mask_input: np.ndarray | None = None,
               chunk: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per prompt the output the model rates best among ``candidates`` ("multimask": the 3 multimask
        outputs, "single": the single-mask output, "all": the 4), given its clicks and optionally the low-res
        logits of an earlier answer (``mask_input``, K x 1 x 256 x 256). Returns masks (K, H, W), scores (K,)
        and the chosen outputs' low-res logits (K, 1, 256, 256), ``chunk`` prompts per decoder call."""
        if candidates not in ("multimask", "single", "all"):
            raise InputError(f"candidates must be 'multimask', 'all' or 'single', got {candidates!r}.")
        return self.predictor.predict_best(points, labels, candidates=candidates, chunk=chunk, mask_input=mask_input,
                                           return_low_res=True)


def box_fill(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels [floor(x0), ceil(x1)) x [floor(y0), ceil(y1)), clipped to the image."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    mask = np.zeros((h, w), bool)
    mask[max(0, math.floor(y0)) : min(h, math.ceil(y1)), max(0, math.floor(x0)) : min(w, math.ceil(x1))] = True
    return mask


class BoxFillSegmenter:
    """Baseline: the box itself is the mask. Clicks are not a box prompt: it has no answer for them."""

    name = "box-fill"

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        self.shape = image.shape[:2]

    def boxes(self, boxes, candidates):
        return np.stack([box_fill(b, self.shape) for b in boxes]), np.ones(len(boxes), np.float32)

    def clicks(self, points, labels, candidates, mask_input=None):
        raise InputError("the box-fill baseline only answers box prompts (--protocol box or detections).")


class GrabCutSegmenter(BoxFillSegmenter):
    """Baseline: OpenCV GrabCut initialised with the box (5 iterations); boxes under 2 px wide or high,
    where GrabCut cannot model a background, fall back to the box itself."""

    name = "grabcut"

    def __init__(self, iterations: int = 5) -> None:
        self.iterations = iterations

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        self.bgr = np.ascontiguousarray(image[..., ::-1])
        self.shape = image.shape[:2]

    def boxes(self, boxes, candidates):
        cv2 = require("cv2", "the GrabCut baseline")

        h, w = self.shape
        out = []
        for b in boxes:
            x0, y0 = max(0, math.floor(b[0])), max(0, math.floor(b[1]))
            x1, y1 = min(w, math.ceil(b[2])), min(h, math.ceil(b[3]))
            if x1 - x0 < 2 or y1 - y0 < 2 or (x1 - x0 >= w and y1 - y0 >= h):
                out.append(box_fill(b, self.shape))
                continue
            mask = np.zeros((h, w), np.uint8)
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.setRNGSeed(0)
            cv2.grabCut(self.bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
            out.append((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD))
        return np.stack(out), np.ones(len(boxes), np.float32)


class OracleSegmenter:
    """The ground truth itself (for checking the protocols): a box returns the mask of the image's
    annotation with that box; clicks return the mask of the annotation their first click lies in."""

    name = "oracle"

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        self.anns = self.dataset.annotations(image_id)

    def boxes(self, boxes, candidates):
        masks = []
        for b in boxes:
            xyxy = [np.array([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]])
                    for a in self.anns]
            k = int(np.argmin([np.abs(x - b).sum() for x in xyxy]))
            masks.append(self.dataset.gt_mask(self.anns[k]))
        return np.stack(masks), np.ones(len(boxes), np.float32)

    def clicks(self, points, labels, candidates, mask_input=None):
        masks = []
        for p in points:
            x, y = int(p[0][0]), int(p[0][1])
            inside = [a for a in self.anns if self.dataset.gt_mask(a)[y, x]]
            masks.append(self.dataset.gt_mask(inside[0]) if inside else np.zeros(self.dataset.gt_mask(self.anns[0]).shape, bool))
        return np.stack(masks), np.ones(len(points), np.float32)


BASELINES = {"box-fill": BoxFillSegmenter, "grabcut": GrabCutSegmenter}
