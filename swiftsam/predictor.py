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
from .modeling.prompt_decoder import OUTPUT_REQUESTS, choose_outputs
from .modeling.contract import ModelContract
from .modeling.sam import Sam
from .prompts import PromptBatch, check_boxes, check_mask_input, check_points, check_prompt_tensors
from .transforms import frame_shape, postprocess_masks, preprocess_image
from .utils import save_torch_atomic

EMBEDDING_FORMAT = "swiftsam-embedding/1"


class Predictor:
    """Segments one image at a time: encode it once (``set_image``), then decode any number of prompts.

    It owns the image state (the embedding, ``original_size``; saved and loaded with ``save_embedding`` /
    ``load_embedding``) and the prompt path: prompts in pixels are checked and built into a
    ``prompts.PromptBatch`` (prompt frame, box corners, padding, box mask prior), decoded by ``decode`` (the one
    call to the engine), reduced by the output policy (``modeling.prompt_decoder.choose_outputs``: multimask,
    single, or the best of some) and upsampled to the image. The engine (torch, onnxruntime, tensorrt) owns
    the compute; the model's contract (``contract``) says how prompts and outputs are read.
    """

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

    @classmethod
    def from_export(cls, onnx_dir: str | os.PathLike[str], engine: str = "onnxruntime", **engine_options) -> Predictor:
        """A Predictor that runs the graphs of an export folder (``swiftsam export``) with no torch weights: input
        size, pixel mean/std, box mask prior and output policy come from its manifest's model contract."""
        from .api import load_export

        if engine not in ("onnxruntime", "tensorrt"):
            raise InputError(f"an export folder runs on onnxruntime or tensorrt, not {engine!r}.")
        return cls(load_export(onnx_dir), engine=engine, onnx_dir=onnx_dir, **engine_options)

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
        return frame_shape(self.original_size, self.model.spec.prompt_size, self.model.spec.geometry)

    @torch.inference_mode()
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Encode an image: H x W x 3 uint8 array, PIL image or path (gray and RGBA converted)."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}.")
        array = load_image(image)
        if image_format == "BGR":
            array = np.ascontiguousarray(array[..., ::-1])
        x, _ = preprocess_image(array, self.model.spec, self.device)  # from the contract: no weights needed
        self.set_image_embedding(self.engine.encode(x), array.shape[:2])

    def get_image_embedding(self) -> torch.Tensor:
        self._require_image()
        return self.features

    def set_image_embedding(self, embedding: torch.Tensor, original_size: tuple[int, int]) -> None:
        """Use a precomputed embedding (1 x C x H x W, the contract's ``embedding_shape``: 1 x 256 x 64 x 64 for
        SAM 1 models) of an image of ``original_size`` (H, W)."""
        want = (1, *self.model.contract.embedding_shape)
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
            "contract": self.model.contract.to_dict(),  # the embedding is only valid for this image spec
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
        if "contract" in payload:  # files written before the contract existed carry only the model name
            theirs = ModelContract.from_dict(payload["contract"]).image
            if theirs != self.model.spec:
                raise InputError(f"{path} was computed at input size {theirs.input_size} ({theirs}); this predictor "
                                 f"runs {self.model.spec}: encode the image again, or load the model as it was.")
        self.set_image_embedding(payload["embedding"], tuple(payload["original_size"].tolist()))

    # ---------------------------------------------------------------- prompts
    @property
    def contract(self):
        """The model's contract (``modeling.contract.ModelContract``): prompt frame, mask-input size, output
        policy and box mask prior, all that prompts and outputs depend on."""
        return self.model.contract

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
            check_mask_input(mask_input, tuple(self.contract.mask_input_size))
        masks, scores, low = self.predict_batch(*batched, multimask_output=multimask_output,
                                                return_logits=return_logits)
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
        prompts = PromptBatch.from_pixels(self.contract, self.original_size, point_coords, point_labels, boxes,
                                          mask_input, device=self.device)
        masks, scores, low = self._predict_torch(prompts, multimask_output, return_logits)
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
        frame_hw = frame_shape(self.original_size, self.contract.image.prompt_size, self.contract.image.geometry)
        check_prompt_tensors(point_coords, point_labels, boxes, mask_input, frame_hw,
                             tuple(self.contract.mask_input_size))
        prompts = PromptBatch.from_frame(self.contract, point_coords, point_labels, boxes, mask_input,
                                         device=self.device)
        return self._predict_torch(prompts, multimask_output, return_logits)

    @torch.inference_mode()
    def decode(self, prompts: PromptBatch, features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every output of the decoder for B prompts: low-res logits (B x 4 x 256 x 256) and predicted IoU
        (B x 4); token 0 is the single-mask output, 1..3 the multimask outputs (``choose_outputs`` picks).

        ``prompts``: a ``PromptBatch`` (``PromptBatch.from_pixels(predictor.contract, predictor.original_size,
        ...)``). ``features``: the embedding to decode against, one for all prompts or one per prompt; by
        default the image's, from ``set_image``. The one call to the engine's decoder: predict*, MaskGenerator,
        evaluation and benchmarks all decode here (training runs the model's modules itself, with gradients).
        """
        if not isinstance(prompts, PromptBatch):
            raise InputError(f"decode takes a swiftsam.prompts.PromptBatch (PromptBatch.from_pixels(...)), "
                             f"got {type(prompts).__name__}.")
        if features is None:
            self._require_image()
            features = self.features
        return self.engine.decode(features, *prompts.to(self.device).tensors())

    @torch.inference_mode()
    def _predict_torch(self, prompts: PromptBatch, multimask_output: bool, return_logits: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """predict_torch on a PromptBatch: the multimask outputs, or the single-mask one (the output policy)."""
        low, scores = self.decode(prompts)
        request = "multimask" if multimask_output else "single"
        low, scores = choose_outputs(low, scores, request, **self.contract.output_policy())
        masks = postprocess_masks(low, self.original_size, self.contract.image.prompt_size, self.contract.image.geometry)
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
        *,
        mask_input: np.ndarray | None = None,
        return_low_res: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """For each of B prompts the one mask the model rates best: masks (B, H, W) bool, scores (B,), and with
        ``return_low_res`` the chosen outputs' low-res logits (B, 1, 256, 256), which can come back as
        ``mask_input`` (B, 1, 256, 256) with the next clicks.

        ``candidates``: "multimask" (best of the 3 multimask outputs), "all" (best of all 4 outputs,
        the single-mask one included) or "single" (the single-mask output; for a model whose single-mask token
        was never trained, ``multimask_only``, the best of the 3 as ``predict(multimask_output=False)``). Only
        the chosen masks are upsampled, ``chunk`` prompts at a time, so many prompts on a large image stay
        within memory.
        """
        if candidates not in OUTPUT_REQUESTS:
            raise InputError(f"candidates must be 'multimask', 'all' or 'single', got {candidates!r}.")
        self._require_image()
        if point_coords is not None:
            point_coords, point_labels = check_points(point_coords, point_labels, self.original_size, batched=True)
        if boxes is not None:
            boxes = check_boxes(boxes, self.original_size, batched=True)
        sizes = {len(a) for a in (point_coords, boxes) if a is not None}
        if not sizes or 0 in sizes:
            raise InputError("predict_best needs points or boxes (at least one prompt).")
        if len(sizes) > 1:
            raise InputError(f"points and boxes give different numbers of prompts: {sorted(sizes)}.")
        n = sizes.pop()
        if mask_input is not None:
            mask_input = np.asarray(mask_input)
            mask_input = check_mask_input(mask_input[:, None] if mask_input.ndim == 3 else mask_input,
                                          tuple(self.contract.mask_input_size), batch=n)
        h, w = self.original_size
        masks, scores = np.zeros((n, h, w), bool), np.zeros(n, np.float32)
        lows = np.zeros((n, 1, *self.contract.mask_input_size), np.float32) if return_low_res else None
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            part = [None if a is None else a[sl] for a in (point_coords, point_labels, boxes, mask_input)]
            prompts = PromptBatch.from_pixels(self.contract, self.original_size, *part, device=self.device)
            low, iou = self.decode(prompts)
            low, iou = choose_outputs(low, iou, candidates, best=True, **self.contract.output_policy())
            up = postprocess_masks(low, self.original_size, self.contract.image.prompt_size,
                                   self.contract.image.geometry)[:, 0]
            masks[sl] = (up > self.model.mask_threshold).cpu().numpy()
            scores[sl] = iou[:, 0].float().cpu().numpy()
            if lows is not None:
                lows[sl] = low.float().cpu().numpy()
        return (masks, scores, lows) if return_low_res else (masks, scores)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise InputError("no image set: call set_image(...) (or load_embedding) before predicting.")
