"""Predictor: encode an image once, then decode masks for any number of prompts.

API-compatible with ``segment_anything.SamPredictor`` (set_image / predict / predict_torch /
get_image_embedding), plus batched prompts and embeddings saved to disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .engines import Engine, get_engine
from .errors import InputError
from .image_io import ImageLike, load_image
from .modeling.prompt_decoder import flatten_prompts
from .modeling.sam import Sam
from .prompts import box_prior_logits, check_boxes, check_mask_input, check_points, check_prompt_tensors
from .transforms import postprocess_masks, resized_shape, to_prompt_frame
from .utils import save_torch_atomic

EMBEDDING_FORMAT = "swiftsam-embedding/1"


class Predictor:
    def __init__(self, model: Sam | str | None = None, checkpoint: str | os.PathLike[str] | None = None,
                 device: str | torch.device | None = None, engine: str | Engine = "auto", **engine_options) -> None:
        """``engine``: auto | torch | onnxruntime | tensorrt (see ``swiftsam.engines``); ``engine_options``
        go to it, e.g. ``dtype="bf16"`` for torch or ``threads=2`` for onnxruntime. Without ``model``, the
        default model (``swiftsam.DEFAULT_MODEL``, bundled: no download)."""
        if model is None or isinstance(model, str):
            from .api import DEFAULT_MODEL, load

            model = load(model or DEFAULT_MODEL, checkpoint=checkpoint, device=device)
        elif device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.engine = get_engine(engine, self.model, **engine_options)
        self.reset_image()

    # ------------------------------------------------------------------ image
    def reset_image(self) -> None:
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.is_image_set = False

    @property
    def device(self) -> torch.device:
        """Where embeddings and decoder outputs live (the engine's device)."""
        return self.engine.device

    @property
    def input_size(self) -> tuple[int, int]:
        """Size of the resized image inside the prompt frame (as SamPredictor.input_size)."""
        self._require_image()
        return resized_shape(*self.original_size, self.model.spec.prompt_size)

    @torch.inference_mode()
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Encode an image: H x W x 3 uint8 array, PIL image or path (gray and RGBA converted)."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}.")
        array = load_image(image)
        if image_format == "BGR":
            array = np.ascontiguousarray(array[..., ::-1])
        x, _ = self.model.preprocess(array)
        self.set_image_embedding(self.engine.encode(x), array.shape[:2])

    def get_image_embedding(self) -> torch.Tensor:
        self._require_image()
        return self.features

    def set_image_embedding(self, embedding: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Use a precomputed embedding (1 x 256 x 64 x 64) of an image of ``original_size`` (H, W)."""
        pe = self.model.prompt_encoder
        want = (1, pe.embed_dim, *pe.image_embedding_size)
        if tuple(embedding.shape) != want:
            raise InputError(f"embedding must have shape {want}, got {tuple(embedding.shape)}.")
        h, w = (int(v) for v in original_size)
        if h <= 0 or w <= 0:
            raise InputError(f"original_size must be positive (H, W), got {original_size}.")
        self.features = embedding.to(self.device)
        self.original_size = (h, w)
        self.is_image_set = True

    def save_embedding(self, path: str | os.PathLike[str]) -> None:
        """Write the current embedding so the image never needs encoding again (atomic write)."""
        self._require_image()
        payload = {
            "format": EMBEDDING_FORMAT,
            "model": self.model.zoo_name or "",
            "embedding": self.features.detach().cpu(),
            "original_size": torch.tensor(self.original_size),
        }
        save_torch_atomic(payload, path)

    def load_embedding(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"embedding file not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{path} is not a swiftsam embedding file ({type(e).__name__}).") from None
        if not isinstance(payload, dict) or payload.get("format") != EMBEDDING_FORMAT:
            raise InputError(f"{path} is not a swiftsam embedding file (written by Predictor.save_embedding).")
        ours = self.model.zoo_name or ""
        if payload["model"] and ours and payload["model"] != ours:
            raise InputError(f"{path} was computed by {payload['model']}, but this predictor runs {ours}.")
        self.set_image_embedding(payload["embedding"], tuple(payload["original_size"].tolist()))

    # ---------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (C x H x W), scores (C,), low-res logits (C x 256 x 256) for one prompt.

        A prompt is any combination of points (x, y pixels with labels 1/0), one box
        (x0, y0, x1, y1) and the low-res logits of an earlier prediction. C is 3 with
        ``multimask_output`` and 1 without.
        """
        batched = [None if a is None else np.asarray(a)[None] for a in (point_coords, point_labels, box, mask_input)]
        if point_coords is not None:
            self._require_image()
            check_points(point_coords, point_labels, self.original_size)
        if box is not None:
            self._require_image()
            check_boxes(box, self.original_size)
        if mask_input is not None:
            check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
        masks, scores, low = self.predict_batch(*batched, multimask_output=multimask_output, return_logits=return_logits)
        return masks[0], scores[0], low[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one decoder call: points (B, N, 2) + labels (B, N), boxes (B, 4), mask_input
        (B, 1, 256, 256). Returns masks (B, C, H, W), scores (B, C), low-res logits (B, C, 256, 256).
        """
        self._require_image()
        if point_coords is None and point_labels is not None:
            raise InputError("point_labels were given without point_coords.")
        if point_coords is None and boxes is None and mask_input is None:
            raise InputError("empty prompt: give at least one point (with its label), a box or a mask_input.")
        dev = self.device
        coords_t = labels_t = boxes_t = mask_t = None
        sizes = []
        if point_coords is not None:
            c, lab = check_points(point_coords, point_labels, self.original_size, batched=True)
            c = to_prompt_frame(c, self.original_size, self.model.spec.prompt_size)
            coords_t = torch.as_tensor(c, dtype=torch.float32, device=dev)
            labels_t = torch.as_tensor(lab, dtype=torch.int64, device=dev)
            sizes.append(c.shape[0])
        if boxes is not None:
            b = check_boxes(boxes, self.original_size, batched=True)
            b = to_prompt_frame(b.reshape(-1, 2, 2), self.original_size, self.model.spec.prompt_size).reshape(-1, 4)
            boxes_t = torch.as_tensor(b, dtype=torch.float32, device=dev)
            sizes.append(b.shape[0])
        if mask_input is not None:
            m = np.asarray(mask_input)
            m = m[:, None] if m.ndim == 3 else m
            m = check_mask_input(m, self.model.prompt_encoder.mask_input_size, batch=m.shape[0] if m.ndim else 0)
            mask_t = torch.as_tensor(m, dtype=torch.float32, device=dev)
            sizes.append(m.shape[0])
        if len(set(sizes)) > 1:
            raise InputError(f"prompt batches differ in size (points, boxes, masks): {sizes}; give one of each per prompt.")
        masks, scores, low = self._predict_torch(coords_t, labels_t, boxes_t, mask_t, multimask_output, return_logits)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low.float().cpu().numpy()

    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts already in the prompt frame, as tensors (as SamPredictor.predict_torch): points
        (B, N, 2) with labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256).

        They are checked as ``predict`` checks its own (shapes, NaN / inf, labels, inside the image as
        resized into the prompt frame); a bad prompt raises InputError.
        """
        self._require_image()
        frame_hw = resized_shape(*self.original_size, self.model.spec.prompt_size)
        check_prompt_tensors(point_coords, point_labels, boxes, mask_input, frame_hw,
                             self.model.prompt_encoder.mask_input_size)
        point_coords, point_labels, boxes, mask_input = (
            None if t is None else torch.as_tensor(t) for t in (point_coords, point_labels, boxes, mask_input))
        return self._predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)

    @torch.inference_mode()
    def _predict_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                       boxes: torch.Tensor | None, mask_input: torch.Tensor | None, multimask_output: bool,
                       return_logits: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """predict_torch on prompts already checked (by predict_batch or predict_torch)."""
        self._require_image()
        sizes = [t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None]
        if not sizes:
            raise InputError("empty prompt: give at least one point (with its label), a box or a mask_input.")
        batch, dev = sizes[0], self.device
        coords, labels = flatten_prompts(point_coords, point_labels, boxes, batch, dev)
        if mask_input is None:
            mask, has_mask = self._no_mask_prompt(boxes, batch, dev)
        else:
            mask, has_mask = mask_input.to(dev, torch.float32), torch.ones(batch, device=dev)
        low, scores = self.engine.decode(self.features, coords, labels, mask, has_mask)
        if multimask_output:
            low, scores = low[:, 1:], scores[:, 1:]
        elif self.model.multimask_only:  # the single-mask token was never trained: keep the best of the three
            best = scores[:, 1:].argmax(dim=1, keepdim=True) + 1
            low = low.gather(1, best[..., None, None].expand(-1, -1, *low.shape[-2:]))
            scores = scores.gather(1, best)
        else:
            low, scores = low[:, :1], scores[:, :1]
        masks = postprocess_masks(low, self.original_size, self.model.spec.prompt_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, scores, low

    @torch.inference_mode()
    def predict_best(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        candidates: str = "multimask",
        chunk: int = 32,
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each of B prompts the one mask the model rates best: masks (B, H, W) bool, scores (B,).

        ``candidates``: "multimask" (best of the 3 multimask outputs), "all" (best of all 4 outputs,
        the single-mask one included) or "single". Only the chosen masks are upsampled, ``chunk``
        prompts at a time, so many prompts on a large image stay within memory.
        """
        if candidates not in ("multimask", "all", "single"):
            raise InputError(f"candidates must be 'multimask', 'all' or 'single', got {candidates!r}.")
        self._require_image()
        ps = self.model.spec.prompt_size
        coords_t = labels_t = boxes_t = None
        if point_coords is not None:
            c, lab = check_points(point_coords, point_labels, self.original_size, batched=True)
            coords_t = torch.as_tensor(to_prompt_frame(c, self.original_size, ps), dtype=torch.float32)
            labels_t = torch.as_tensor(lab, dtype=torch.float32)
        if boxes is not None:
            b = check_boxes(boxes, self.original_size, batched=True)
            b = to_prompt_frame(b.reshape(-1, 2, 2), self.original_size, ps).reshape(-1, 4)
            boxes_t = torch.as_tensor(b, dtype=torch.float32)
        sizes = {t.shape[0] for t in (coords_t, boxes_t) if t is not None}
        if not sizes or 0 in sizes:
            raise InputError("predict_best needs points or boxes (at least one prompt).")
        if len(sizes) > 1:
            raise InputError(f"points and boxes give different numbers of prompts: {sorted(sizes)}.")
        n = sizes.pop()
        h, w = self.original_size
        masks, scores = np.zeros((n, h, w), bool), np.zeros(n, np.float32)
        first = {"multimask": 1, "all": 0, "single": 0}[candidates]
        last = {"multimask": 4, "all": 4, "single": 1}[candidates]
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            k, dev = sl.stop - sl.start, self.device
            coords, labels = flatten_prompts(
                None if coords_t is None else coords_t[sl], None if labels_t is None else labels_t[sl],
                None if boxes_t is None else boxes_t[sl], k, dev)
            mask_in, has_mask = self._no_mask_prompt(None if boxes_t is None else boxes_t[sl], k, dev)
            low, iou = self.engine.decode(self.features, coords, labels, mask_in, has_mask)
            best = iou[:, first:last].argmax(dim=1) + first
            rows = torch.arange(k, device=best.device)
            chosen = low[rows, best][:, None]
            up = postprocess_masks(chosen, self.original_size, ps)[:, 0] > self.model.mask_threshold
            masks[sl] = up.cpu().numpy()
            scores[sl] = iou[rows, best].float().cpu().numpy()
        return masks, scores

    def _no_mask_prompt(self, boxes: torch.Tensor | None, batch: int, dev: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask input of prompts that bring none: zeros with has_mask 0, or, for a model trained
        with the box mask prior, the box-shaped prior of each box with has_mask 1."""
        size = self.model.prompt_encoder.mask_input_size
        if boxes is not None and getattr(self.model, "box_mask_prior", False):
            prior = box_prior_logits(boxes.to(dev, torch.float32), self.model.spec.prompt_size, size)
            return prior, torch.ones(batch, device=dev)
        return torch.zeros((batch, 1, *size), device=dev), torch.zeros(batch, device=dev)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise InputError("no image set: call set_image(...) (or load_embedding) before predicting.")
