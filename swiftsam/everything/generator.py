"""MaskGenerator: every object in an image, from a point grid, a hierarchical grid or detector boxes.

Parameters and output records follow ``segment_anything.SamAutomaticMaskGenerator``; what differs is
how the work is done. Only masks whose predicted IoU passes ``pred_iou_thresh`` are upsampled to
the image size (the reference upsamples all three masks of every point first), decoding runs
through the Predictor's engine, and RLEs come from pycocotools.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..errors import InputError
from ..image_io import ImageLike, load_image
from ..modeling.prompt_decoder import choose_outputs
from ..modeling.sam import Sam
from ..predictor import Predictor
from ..prompts import PromptBatch, check_boxes
from ..transforms import postprocess_masks
from .mask_ops import (
    crop_boxes,
    decode_rle,
    encode_rle,
    layer_point_grids,
    masks_to_boxes,
    near_crop_edge,
    point_grid,
    remove_small_regions,
    rle_area,
    stability_score,
    uncompressed_rle,
)
from .nms import batched_nms, box_area

STRATEGIES = ("grid", "hierarchical", "boxes")
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
UPSAMPLE_CHUNK = 48  # masks upsampled to full size at once: bounds memory on large images
# SamAutomaticMaskGenerator's defaults (TinySAM's for high_score_thresh): what a model without calibrated
# defaults of its own (ModelEntry.everything, attached by swiftsam.build/load as model.everything_defaults) gets
SAM_DEFAULTS = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                "stability_score_offset": 1.0, "high_score_thresh": 8.5}


def model_defaults(model: Sam | Predictor) -> dict:
    """The generator settings a model runs with when the caller leaves them unset (None)."""
    sam = model.model if isinstance(model, Predictor) else model
    return {**SAM_DEFAULTS, **(getattr(sam, "everything_defaults", None) or {})}


def _max(a: float | None, b: float) -> float:
    return b if a is None else max(a, b)


class NoMasksWarning(UserWarning):
    """Every candidate mask of an image was filtered out: the thresholds do not suit these weights."""


@dataclass
class Candidates:
    """Masks kept so far, in image coordinates: one entry per mask."""

    rles: list[dict] = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))  # XYXY, inclusive last pixel
    iou: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2))  # prompt point, or box centre
    prompt_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))  # NaN for point prompts
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, index: torch.Tensor) -> Candidates:
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        idx = index.tolist()
        out = Candidates(rles=[self.rles[i] for i in idx])
        for f in fields(self):
            if f.name != "rles":
                setattr(out, f.name, getattr(self, f.name)[index])
        return out

    @staticmethod
    def cat(parts: list[Candidates]) -> Candidates:
        parts = [p for p in parts if len(p)] or [Candidates()]
        out = Candidates(rles=[r for p in parts for r in p.rles])
        for f in fields(Candidates):
            if f.name != "rles":
                setattr(out, f.name, torch.cat([getattr(p, f.name) for p in parts]))
        return out


@dataclass
class GenerationStats:
    """What the last ``generate`` call did (for benchmarks and progress reports)."""

    prompts: int = 0  # prompts decoded (points or boxes)
    skipped_points: int = 0  # hierarchical: dense points not decoded because they were covered
    masks_decoded: int = 0  # candidate masks scored by the decoder
    masks_upsampled: int = 0  # candidates that passed the IoU threshold and were brought to full size
    masks_stable: int = 0  # ... and the stability threshold
    max_predicted_iou: float | None = None  # over every candidate: a pred_iou_thresh at or above it keeps nothing
    max_stability: float | None = None  # over the candidates that passed pred_iou_thresh
    masks_before_nms: int = 0
    masks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class MaskGenerator:
    """Automatic masks for a whole image.

    ``model``: a zoo name, a ``Sam`` or a ``Predictor``; a Predictor given here lends its model and engine
    and keeps its own image (the generator encodes each crop into a Predictor state of its own). Prompts go
    the Predictor's one path: ``PromptBatch`` -> ``Predictor.decode`` -> ``choose_outputs``.

    ``strategy``:

    * ``"grid"``: a ``points_per_side`` x ``points_per_side`` point grid (per crop layer), as
      ``SamAutomaticMaskGenerator``.
    * ``"hierarchical"`` (TinySAM): first a sparse grid of ``points_per_side // sparse_factor``
      points per side; the union of its kept masks' high-confidence pixels (logit >
      ``high_score_thresh``, 8.5 as in TinySAM) is a coverage map; then the dense grid, skipping the
      points that fall in covered pixels. Both sets of masks are merged by box NMS. TinySAM reports
      about 2x fewer decoder calls for the same masks on well-covered images.
    * ``"boxes"`` (MobileSAMv2's object-aware prompting): one prompt per detector box, given to
      ``generate(image, boxes=...)``; decoded ``boxes_per_batch`` at a time, single-mask output
      (best of the three multimask outputs for models whose single-mask token is untrained).

    Filtering, in order: predicted IoU > ``pred_iou_thresh``; stability score >=
    ``stability_score_thresh``; boxes touching an inner crop edge dropped; box NMS per crop
    (``box_nms_thresh``) and across crops (``crop_nms_thresh``, smaller crops preferred); then, with
    ``min_mask_region_area`` > 0, holes and islands smaller than that are removed (OpenCV) and NMS
    runs again preferring masks that did not change. A threshold <= 0 disables its filter.

    Settings left at None (``points_per_side`` when no ``point_grids`` are given, ``pred_iou_thresh``,
    ``stability_score_thresh``, ``stability_score_offset``, ``high_score_thresh``) take the model's
    calibrated defaults (``model.everything_defaults``, from its zoo entry; see ``model_defaults``), else
    SAM's (``SAM_DEFAULTS``: 32, 0.88, 0.95, 1.0, 8.5). When every candidate of an image is filtered out,
    ``generate`` warns (``NoMasksWarning``) with the highest scores seen and what to lower.
    ``progress``: a bar over the decoded prompts on stderr (True; None: only on a terminal).

    Records (``generate`` returns one dict per mask, sorted as NMS kept them): ``segmentation``
    (H x W bool, or a COCO RLE, per ``output_mode``), ``area``, ``bbox`` (XYWH), ``predicted_iou``,
    ``point_coords`` ([[x, y]] of the prompt point; the box centre for box prompts),
    ``stability_score``, ``crop_box`` (XYWH); box prompts also give ``prompt_box`` (XYXY).
    """

    def __init__(
        self,
        model: Sam | Predictor | str,
        points_per_side: int | None = None,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float | None = None,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        strategy: str = "grid",
        high_score_thresh: float | None = None,
        sparse_factor: int = 4,
        boxes_per_batch: int = 256,
        engine: str = "auto",
        progress: bool | None = False,
        **engine_options,
    ) -> None:
        if strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        if output_mode not in OUTPUT_MODES:
            raise InputError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}.")
        if points_per_side is not None and point_grids is not None:
            raise InputError("give exactly one of points_per_side and point_grids (both were given).")
        if isinstance(model, str):
            from ..api import load

            model = load(model)
        defaults = model_defaults(model)
        if point_grids is None and points_per_side is None:
            points_per_side = defaults["points_per_side"]
        pred_iou_thresh = defaults["pred_iou_thresh"] if pred_iou_thresh is None else pred_iou_thresh
        stability_score_thresh = (defaults["stability_score_thresh"] if stability_score_thresh is None
                                  else stability_score_thresh)
        stability_score_offset = (defaults["stability_score_offset"] if stability_score_offset is None
                                  else stability_score_offset)
        high_score_thresh = defaults["high_score_thresh"] if high_score_thresh is None else high_score_thresh
        if points_per_side is not None and points_per_side < 1:
            raise InputError(f"points_per_side must be >= 1, got {points_per_side}.")
        if points_per_batch < 1 or boxes_per_batch < 1:
            raise InputError("points_per_batch and boxes_per_batch must be >= 1.")
        if crop_n_layers < 0:
            raise InputError(f"crop_n_layers must be >= 0, got {crop_n_layers}.")
        if strategy == "boxes" and crop_n_layers:
            raise InputError("strategy='boxes' runs on the whole image: crop_n_layers must be 0.")
        if strategy == "hierarchical":
            if point_grids is not None:
                raise InputError("strategy='hierarchical' builds its own grids: give points_per_side, not point_grids.")
            if sparse_factor < 2 or points_per_side // sparse_factor < 1:
                raise InputError(f"hierarchical needs points_per_side // sparse_factor >= 1 and sparse_factor >= 2, "
                                 f"got {points_per_side} // {sparse_factor}.")
        if point_grids is not None:
            if len(point_grids) != crop_n_layers + 1:
                raise InputError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(point_grids)}.")
            point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
            if any(((g < 0) | (g > 1)).any() for g in point_grids):
                raise InputError("point_grids must hold (x, y) points normalised to [0, 1].")
        # a Predictor of the generator's own: it holds the crops' embeddings, so a Predictor passed in keeps its
        # image; given one, the generator's shares its model and engine (no second model, export or compile)
        self.predictor = (copy.copy(model) if isinstance(model, Predictor)
                          else Predictor(model, engine=engine, **engine_options))
        self.predictor.reset_image()
        self.model = self.predictor.model
        self.strategy = strategy
        self.points_per_side = points_per_side
        self.point_grids = point_grids if point_grids is not None else (
            layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
            if points_per_side is not None else [])
        self.points_per_batch = points_per_batch
        self.boxes_per_batch = boxes_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.high_score_thresh = high_score_thresh
        self.sparse_factor = sparse_factor
        self.progress = progress
        self.stats = GenerationStats()
        self._bar = None

    # ----------------------------------------------------------------- public
    @torch.inference_mode()
    def generate(self, image: ImageLike, boxes: np.ndarray | list | None = None) -> list[dict]:
        """Masks for ``image`` (H x W x 3 uint8 RGB, PIL image or path). ``boxes`` (N x 4, XYXY
        pixels) are the prompts of ``strategy="boxes"`` and only of it."""
        array = load_image(image)
        hw = array.shape[:2]
        if self.strategy == "boxes":
            if boxes is None:
                raise InputError("strategy='boxes' needs boxes: generate(image, boxes=N x 4 XYXY array).")
            boxes = np.zeros((0, 4)) if len(boxes) == 0 else check_boxes(boxes, hw, batched=True)
        elif boxes is not None:
            raise InputError(f"boxes are prompts of strategy='boxes'; this generator uses {self.strategy!r}.")
        self.stats = GenerationStats()
        t0 = time.perf_counter()
        crops, layers = crop_boxes(hw, self.crop_n_layers, self.crop_overlap_ratio)
        try:
            self._bar = self._progress_bar(boxes, layers)
            found = Candidates.cat([self._process_crop(array, crop, layer, boxes)
                                    for crop, layer in zip(crops, layers)])
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if len(crops) > 1 and len(found):
            # the same object seen in several crops: keep the one from the smallest crop
            keep = batched_nms(found.boxes.float(), 1.0 / box_area(found.crop_boxes.float()),
                               torch.zeros(len(found)), self.crop_nms_thresh)
            found = found.select(keep)
        if self.min_mask_region_area > 0 and len(found):
            found = self._clean_small_regions(found, max(self.box_nms_thresh, self.crop_nms_thresh))
        records = self._records(found)
        self.stats.masks = len(records)
        self.stats.seconds["total"] = time.perf_counter() - t0
        if not records and self.stats.masks_decoded:
            warnings.warn(self.no_masks_message(), NoMasksWarning, stacklevel=3)  # past inference_mode
        return records

    def no_masks_message(self) -> str:
        """Why the last ``generate`` kept no mask, and which setting to lower (from its stats)."""
        s = self.stats
        text = f"no mask kept: {s.masks_decoded} candidate masks decoded"
        if s.masks_upsampled == 0:
            return (f"{text}, none with a predicted IoU above pred_iou_thresh={self.pred_iou_thresh:g} (the highest "
                    f"was {s.max_predicted_iou:.3f}); lower pred_iou_thresh (--pred-iou-thresh) below that.")
        text += f", {s.masks_upsampled} above pred_iou_thresh={self.pred_iou_thresh:g}"
        if s.masks_stable == 0:
            return (f"{text}, none with a stability score of at least stability_score_thresh="
                    f"{self.stability_score_thresh:g} (offset {self.stability_score_offset:g}; the highest was "
                    f"{s.max_stability:.3f}); lower stability_score_thresh (--stability-score-thresh) below that, "
                    f"or the offset (--stability-score-offset).")
        return (f"{text}, {s.masks_stable} stable enough, all dropped at the crop edges or by "
                f"min_mask_region_area={self.min_mask_region_area}; lower the thresholds, or use crop_n_layers=0.")

    def _progress_bar(self, boxes: np.ndarray | None, layers: list[int]):
        """A bar over the prompts to decode (an upper bound for the hierarchical strategy, whose covered
        points are counted as they are skipped)."""
        if self.progress is False:
            return None
        from tqdm.auto import tqdm

        if self.strategy == "boxes":
            total = len(boxes)
        else:
            total = sum(len(self.point_grids[layer]) for layer in layers)
            if self.strategy == "hierarchical":
                total += len(layers) * (self.points_per_side // self.sparse_factor) ** 2
        return tqdm(total=total, desc="everything", unit="prompt", leave=False, file=sys.stderr,
                    disable=None if self.progress is None else False)

    # ---------------------------------------------------------------- crops
    def _process_crop(self, image: np.ndarray, crop: list[int], layer: int, boxes: np.ndarray | None) -> Candidates:
        x0, y0, x1, y1 = crop
        crop_hw = (y1 - y0, x1 - x0)
        t = time.perf_counter()
        self.predictor.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
        self.stats.seconds["encode"] = self.stats.seconds.get("encode", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        image_box = [0, 0, image.shape[1], image.shape[0]]
        scale = np.array([crop_hw[1], crop_hw[0]], dtype=np.float64)
        if self.strategy == "boxes":
            found = self._decode_all(boxes, crop, crop_hw, image_box, is_box=True)
        elif self.strategy == "grid":
            found = self._decode_all(self.point_grids[layer] * scale, crop, crop_hw, image_box)
        else:
            sparse_pts = point_grid(self.points_per_side // self.sparse_factor) * scale
            coverage = torch.zeros(crop_hw, dtype=torch.bool)
            sparse = self._decode_all(sparse_pts, crop, crop_hw, image_box, coverage=coverage)
            dense_pts = self.point_grids[layer] * scale
            covered = self.covered_points(dense_pts, coverage)
            self.stats.skipped_points += int(covered.sum())
            if self._bar is not None:
                self._bar.update(int(covered.sum()))
            dense = self._decode_all(dense_pts[~covered], crop, crop_hw, image_box)
            found = Candidates.cat([sparse, dense])
        self.predictor.reset_image()
        self.stats.masks_before_nms += len(found)
        if len(found):
            keep = batched_nms(found.boxes.float(), found.iou, torch.zeros(len(found)), self.box_nms_thresh)
            found = found.select(keep)
        # to image coordinates
        shift = torch.tensor([x0, y0, x0, y0])
        found.boxes = found.boxes + shift
        found.points = found.points + shift[:2]
        found.prompt_boxes = found.prompt_boxes + shift
        found.crop_boxes = torch.tensor([crop], dtype=torch.float32).expand(len(found), 4).clone()
        found.rles = [self._uncrop_rle(r, crop, image.shape[:2]) for r in found.rles] if crop != image_box else found.rles
        self.stats.seconds["decode"] = self.stats.seconds.get("decode", 0.0) + time.perf_counter() - t
        return found

    @staticmethod
    def covered_points(points: np.ndarray, coverage: torch.Tensor) -> np.ndarray:
        """Which (x, y) pixel points fall on a covered pixel of the H x W ``coverage`` map."""
        if len(points) == 0:
            return np.zeros(0, bool)
        h, w = coverage.shape
        xs = np.clip(points[:, 0].astype(np.int64), 0, w - 1)
        ys = np.clip(points[:, 1].astype(np.int64), 0, h - 1)
        return coverage.numpy()[ys, xs]

    @staticmethod
    def _uncrop_rle(rle: dict, crop: list[int], hw: tuple[int, int]) -> dict:
        x0, y0, x1, y1 = crop
        full = np.zeros((1, *hw), bool)
        full[0, y0:y1, x0:x1] = decode_rle(rle)
        return encode_rle(full)[0]

    # ------------------------------------------------------------- decoding
    def _decode_all(self, prompts: np.ndarray, crop: list[int], crop_hw: tuple[int, int], image_box: list[int],
                    is_box: bool = False, coverage: torch.Tensor | None = None) -> Candidates:
        per_batch = self.boxes_per_batch if is_box else self.points_per_batch
        parts = [
            self._decode_batch(prompts[i:i + per_batch], crop, crop_hw, image_box, is_box, coverage)
            for i in range(0, len(prompts), per_batch)
        ]
        return Candidates.cat(parts)

    def _decode_batch(self, prompts: np.ndarray, crop: list[int], crop_hw: tuple[int, int], image_box: list[int],
                      is_box: bool, coverage: torch.Tensor | None) -> Candidates:
        ps = self.model.spec.prompt_size
        k, dev = len(prompts), self.predictor.device
        self.stats.prompts += k
        if self._bar is not None:
            self._bar.update(k)
        contract = self.predictor.contract
        if is_box:  # with the box mask prior for models trained with it, as predict(box=...)
            batch = PromptBatch.from_pixels(contract, crop_hw, boxes=prompts, device=dev)
        else:
            batch = PromptBatch.from_pixels(contract, crop_hw, point_coords=prompts[:, None],
                                            point_labels=np.ones((k, 1)), device=dev)
        low, iou = self.predictor.decode(batch)
        if not is_box:  # the three multimask outputs, as SamAutomaticMaskGenerator
            low, iou = choose_outputs(low, iou, "multimask", **contract.output_policy())
            points = torch.as_tensor(prompts, dtype=torch.float32).repeat_interleave(3, dim=0)
            prompt_boxes = torch.full((3 * k, 4), float("nan"))
        else:  # the single-mask output (the best of the three for models whose single-mask token is untrained)
            low, iou = choose_outputs(low, iou, "single", **contract.output_policy())
            prompt_boxes = torch.as_tensor(prompts, dtype=torch.float32)
            points = (prompt_boxes[:, :2] + prompt_boxes[:, 2:]) / 2
        low, iou = low.flatten(0, 1), iou.flatten(0, 1).float().cpu()
        self.stats.masks_decoded += len(iou)
        if len(iou):
            self.stats.max_predicted_iou = _max(self.stats.max_predicted_iou, float(iou.max()))
        keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0 else torch.ones(len(iou), dtype=torch.bool)
        idx = keep.nonzero().flatten()
        self.stats.masks_upsampled += len(idx)
        thr = self.model.mask_threshold
        parts = []
        for start in range(0, len(idx), UPSAMPLE_CHUNK):
            sel = idx[start:start + UPSAMPLE_CHUNK]
            # full-size logits and masks stay on the engine's device; only per-mask numbers, the coverage
            # map and the RLE strings come back to the host
            logits = postprocess_masks(low[sel.to(low.device)][:, None].float(), crop_hw, ps,
                                       self.model.spec.geometry)[:, 0]
            stab = stability_score(logits, thr, self.stability_score_offset).cpu()
            ok = stab >= self.stability_score_thresh if self.stability_score_thresh > 0 else torch.ones_like(stab, dtype=torch.bool)
            if len(stab):
                self.stats.max_stability = _max(self.stats.max_stability, float(stab.nan_to_num(0).max()))
            logits, sel, stab = logits[ok.to(logits.device)], sel[ok], stab[ok]
            self.stats.masks_stable += len(sel)
            if coverage is not None and len(sel):
                coverage |= (logits > self.high_score_thresh).any(dim=0).cpu()
            masks = logits > thr
            boxes = masks_to_boxes(masks).cpu()
            edge = near_crop_edge(boxes, crop, image_box)
            masks, sel, stab, boxes = masks[~edge.to(masks.device)], sel[~edge], stab[~edge], boxes[~edge]
            parts.append(Candidates(
                rles=encode_rle(masks), boxes=boxes.float(), iou=iou[sel], stability=stab.float(),
                points=points[sel], prompt_boxes=prompt_boxes[sel], crop_boxes=torch.zeros(len(sel), 4),
            ))
        return Candidates.cat(parts)

    # ------------------------------------------------------- postprocessing
    def _clean_small_regions(self, found: Candidates, nms_thresh: float) -> Candidates:
        """Fill small holes, drop small islands, and re-run NMS preferring masks left unchanged."""
        masks, unchanged = [], []
        for rle in found.rles:
            mask = decode_rle(rle)
            mask, changed_holes = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            masks.append(mask)
            unchanged.append(not (changed_holes or changed_islands))
        stack = torch.from_numpy(np.stack(masks))
        boxes = masks_to_boxes(stack).float()
        keep = batched_nms(boxes, torch.tensor(unchanged, dtype=torch.float32), torch.zeros(len(found)), nms_thresh)
        for i in keep.tolist():
            if not unchanged[i]:
                found.rles[i] = encode_rle(stack[i:i + 1].numpy())[0]
                found.boxes[i] = boxes[i]
        return found.select(keep)

    def _records(self, found: Candidates) -> list[dict]:
        records = []
        for i, rle in enumerate(found.rles):
            x0, y0, x1, y1 = (int(v) for v in found.boxes[i].tolist())
            cx0, cy0, cx1, cy1 = (int(v) for v in found.crop_boxes[i].tolist())
            if self.output_mode == "coco_rle":
                seg = rle
            elif self.output_mode == "binary_mask":
                seg = decode_rle(rle)
            else:
                seg = uncompressed_rle(decode_rle(rle))
            rec = {
                "segmentation": seg,
                "area": rle_area(rle),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(found.iou[i]),
                "point_coords": [found.points[i].tolist()],
                "stability_score": float(found.stability[i]),
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            }
            if not torch.isnan(found.prompt_boxes[i]).any():
                rec["prompt_box"] = found.prompt_boxes[i].tolist()
            records.append(rec)
        return records
