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
from .modeling.contract import ModelContract
from .modeling.features import ImageFeatures
from .modeling.prompt_decoder import OUTPUT_REQUESTS, choose_outputs
from .modeling.segmenter import Segmenter
from .prompts import PromptBatch, as_float_array, check_boxes, check_mask_input, check_points, check_prompt_tensors
from .runtime import resolve_device
from .transforms import frame_shape, postprocess_masks, preprocess_image
from .utils import save_torch_atomic

EMBEDDING_FORMAT = "swiftsam-embedding/1"
IMAGE_BATCH_PROMPTS = 64  # prompts per decoder call in predict_batch after set_image_batch (memory: one image's
# features per prompt, ~16 MB each for SAM 2)


class Predictor:
    """Segments one image at a time: encode it once (``set_image``), then decode any number of prompts.

    It owns the image state (the embedding, ``original_size``; saved and loaded with ``save_embedding`` /
    ``load_embedding``) and the prompt path: prompts in pixels are checked and built into a
    ``prompts.PromptBatch`` (prompt frame, box corners, padding, box mask prior), decoded by ``decode`` (the one
    call to the engine), reduced by the output policy (``modeling.prompt_decoder.choose_outputs``: multimask,
    single, or the best of some) and upsampled to the image. The engine (torch, onnxruntime, tensorrt) owns
    the compute; the model's contract (``contract``) says how prompts and outputs are read.
    """

    def __init__(self, model: Segmenter | str | None = None, checkpoint: str | os.PathLike[str] | None = None,
                 device: str | torch.device | None = "auto", engine: str | Engine = "auto", **engine_options) -> None:
        """``engine``: auto | torch | onnxruntime | tensorrt (see ``swiftsam.engines``); ``engine_options``
        go to it, e.g. ``dtype="bf16"`` for torch or ``threads=2`` for onnxruntime. Without ``model``, the
        default model (``swiftsam.DEFAULT_MODEL``, bundled: no download). ``device``: auto (CUDA when present,
        else the CPU), cpu, cuda, cuda:N; a model given as an object stays where it is unless a device is named."""
        if model is None or isinstance(model, str):
            from .api import DEFAULT_MODEL, load

            model = load(model or DEFAULT_MODEL, checkpoint=checkpoint, device=device)
        elif device not in (None, "auto"):
            model = model.to(resolve_device(device))
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
        self.features: ImageFeatures | None = None
        self.original_size: tuple[int, int] | None = None
        self.is_image_set = False
        self._batch: list[tuple[ImageFeatures, tuple[int, int]]] | None = None  # set_image_batch's images

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

    @torch.inference_mode()
    def set_image_batch(self, images: list[ImageLike], chunk: int = 8) -> None:
        """Encode several images (as SAM2ImagePredictor.set_image_batch), ``chunk`` at a time through the encoder;
        ``predict_batch`` then takes one prompt set per image. Images of one size share one encoder call."""
        if isinstance(images, (np.ndarray, str, os.PathLike)) or not len(images):
            raise InputError("set_image_batch takes a non-empty list of images (arrays, PIL images or paths).")
        arrays = [load_image(im) for im in images]
        entries: list[tuple[ImageFeatures, tuple[int, int]]] = []
        for start in range(0, len(arrays), chunk):
            part = arrays[start:start + chunk]
            x = torch.cat([preprocess_image(a, self.model.spec, self.device)[0] for a in part])
            feats = self.engine.encode(x)
            entries += [(feats.map(lambda t, i=i: t[i:i + 1]), a.shape[:2]) for i, a in enumerate(part)]
        self.set_image_embedding(*entries[0])
        self._batch = entries

    def get_image_embedding(self) -> torch.Tensor:
        """The image embedding the decoder attends to (1 x C x h x w), as SamPredictor's."""
        self._require_image()
        return self.features.embedding

    def get_image_features(self) -> ImageFeatures:
        """Every feature level of the image (SAM 2: the embedding and its two higher-resolution levels)."""
        self._require_image()
        return self.features

    def set_image_embedding(self, embedding: torch.Tensor | ImageFeatures, original_size: tuple[int, int]) -> None:
        """Use precomputed features of an image of ``original_size`` (H, W): the embedding (1 x C x h x w, the
        contract's ``embedding_shape``: 1 x 256 x 64 x 64 for SAM 1 models), or every level (``ImageFeatures``)
        for models with higher-resolution levels (SAM 2)."""
        features = ImageFeatures.of(embedding)
        layout = self.model.contract.features
        if len(features.levels) != len(layout):
            raise InputError(f"{self.model.zoo_name or 'this model'} needs {len(layout)} feature level(s) "
                             f"({', '.join(f.name for f in layout)}), got {len(features.levels)}: pass the "
                             f"ImageFeatures of Predictor.get_image_features() / Engine.encode.")
        for t, f in zip(features.levels, layout):
            want = (1, f.channels, f.size, f.size)
            if tuple(t.shape) != want:
                what = "embedding" if f is layout[0] else f"feature level {f.name}"
                raise InputError(f"{what} must have shape {want}, got {tuple(t.shape)}.")
        h, w = (int(v) for v in original_size)
        if h <= 0 or w <= 0:
            raise InputError(f"original_size must be positive (H, W), got {original_size}.")
        self.features = self.engine.adopt(features)
        self.original_size = (h, w)
        self.is_image_set = True
        self._batch = None

    def save_embedding(self, path: str | os.PathLike[str]) -> None:
        """Write the current embedding so the image never needs encoding again (atomic write)."""
        self._require_image()
        payload = {
            "format": EMBEDDING_FORMAT,
            "model": self.model.zoo_name or "",
            "contract": self.model.contract.to_dict(),  # the embedding is only valid for this image spec
            "embedding": self.features.embedding.detach().cpu(),
            "high_res": [t.detach().cpu() for t in self.features.high_res],
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
        levels = (payload["embedding"], *payload.get("high_res", ()))
        self.set_image_embedding(ImageFeatures.of(levels), tuple(payload["original_size"].tolist()))

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
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (C x H x W), scores (C,), low-res logits (C x 256 x 256) for one prompt.

        A prompt is any combination of points (x, y pixels with labels 1/0), one box
        (x0, y0, x1, y1) and the low-res logits of an earlier prediction. C is 3 with
        ``multimask_output`` and 1 without. ``normalize_coords=False`` (SAM2ImagePredictor's flag): points and
        box are given relative to the image, 0..1, instead of in pixels.
        """
        if not normalize_coords:
            self._require_image()
            h, w = self.original_size
            point_coords = None if point_coords is None else np.asarray(point_coords, np.float64) * (w, h)
            box = None if box is None else np.asarray(box, np.float64) * (w, h, w, h)
        batched = [None if a is None else np.asarray(a)[None] for a in (point_coords, point_labels, box, mask_input)]
        if point_coords is not None:
            self._require_image()
            check_points(point_coords, point_labels, self.original_size)
        if box is not None:
            self._require_image()
            check_boxes(box, self.original_size)
        if mask_input is not None:
            check_mask_input(mask_input, tuple(self.contract.mask_input_size))
        masks, scores, low = self._predict_prompts(*batched, multimask_output, return_logits)
        return masks[0], scores[0], low[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one decoder call: points (B, N, 2) + labels (B, N), boxes (B, 4), mask_input
        (B, 1, 256, 256). Returns masks (B, C, H, W), scores (B, C), low-res logits (B, C, 256, 256).

        After ``set_image_batch`` it is SAM2ImagePredictor's ``predict_batch``: each argument is a list with one
        entry per image (None where an image has none; an entry is what ``predict`` takes, or several prompts as
        here), and it returns lists of masks, scores and low-res logits, one per image. The prompts of all images
        are decoded together (one decoder call per prompt shape and 64 prompts), each against its own image.
        """
        if self._batch is not None:
            return self._predict_image_batch(point_coords, point_labels, boxes, mask_input, multimask_output,
                                             return_logits, normalize_coords)
        self._require_image()
        if not normalize_coords:
            h, w = self.original_size
            point_coords = None if point_coords is None else np.asarray(point_coords, np.float64) * (w, h)
            boxes = None if boxes is None else np.asarray(boxes, np.float64) * (w, h, w, h)
        return self._predict_prompts(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)

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

    def _predict_image_batch(self, point_coords, point_labels, boxes, mask_input, multimask_output, return_logits,
                             normalize_coords) -> tuple[list, list, list]:
        """``predict_batch`` after ``set_image_batch``: the prompts of all images decoded together, up to
        ``IMAGE_BATCH_PROMPTS`` per decoder call (each prompt against its own image's features), prompts of one
        shape (number of point tokens) per call, as a decoder pads nothing between prompts; then each image's
        masks upsampled to its own size."""
        entries = self._batch
        n = len(entries)

        def per_image(arg, what):
            if arg is None:
                return [None] * n
            if len(arg) != n:
                raise InputError(f"{what} has {len(arg)} entries for {n} images set by set_image_batch.")
            return list(arg)

        args = [per_image(a, w) for a, w in ((point_coords, "point_coords_batch"), (point_labels, "point_labels_batch"),
                                              (boxes, "box_batch"), (mask_input, "mask_input_batch"))]
        batches, single = [], []
        for i, ((_, size), c, lab, b, m) in enumerate(zip(entries, *args)):
            c = None if c is None else as_float_array(c, f"point_coords_batch[{i}]")
            b = None if b is None else as_float_array(b, f"box_batch[{i}]")
            one = not (b is not None and b.ndim == 2 and len(b) > 1 or c is not None and c.ndim == 3)
            if one:  # one prompt, as ``predict`` takes it
                c, lab, m = (None if a is None else np.asarray(a)[None] for a in (c, lab, m))
                b = None if b is None else b.reshape(1, 4) if b.size == 4 else b[None]  # a bad one: check_boxes says
            if not normalize_coords:
                h, w = size
                c = None if c is None else c * (w, h)
                b = None if b is None else b * (w, h, w, h)
            batches.append(PromptBatch.from_pixels(self.contract, size, c, lab, b, m, device=self.device))
            if not len(batches[-1]):
                raise InputError(f"image {i} of the batch has no prompt (an empty array): give it at least one, "
                                 f"or None to skip it.")
            single.append(one)
        decoded = self._decode_image_batch([f for f, _ in entries], batches)
        out: tuple[list, list, list] = ([], [], [])
        request = "multimask" if multimask_output else "single"
        for (_, size), one, (low, iou) in zip(entries, single, decoded):
            low, iou = choose_outputs(low, iou, request, **self.contract.output_policy())
            masks = postprocess_masks(low, size, self.contract.image.prompt_size, self.contract.image.geometry)
            if not return_logits:
                masks = masks > self.model.mask_threshold
            if self.contract.low_res_clamp is not None:
                low = low.clamp(-self.contract.low_res_clamp, self.contract.low_res_clamp)
            res = masks.cpu().numpy(), iou.float().cpu().numpy(), low.float().cpu().numpy()
            for acc, r in zip(out, res):
                acc.append(r[0] if one else r)
        return out

    def _decode_image_batch(self, features: list[ImageFeatures], batches: list[PromptBatch]
                            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every output (low-res logits, IoU) of the prompts ``batches[i]`` on the image of ``features[i]``."""
        results: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in batches]
        # an engine built for fewer prompts per call (TensorRT's profiles) takes fewer
        step = min(IMAGE_BATCH_PROMPTS, self.engine.max_prompts or IMAGE_BATCH_PROMPTS)
        for tokens in dict.fromkeys(p.point_coords.shape[1] for p in batches):
            group = [i for i, p in enumerate(batches) if p.point_coords.shape[1] == tokens]
            prompts = PromptBatch.cat([batches[i] for i in group])
            sizes = [len(batches[i]) for i in group]
            ends = np.cumsum(sizes)
            starts = ends - sizes  # image group[j] has prompts starts[j]:ends[j]
            owner = np.repeat(np.arange(len(group)), sizes)  # each prompt's place in the group
            gather = None  # the group's features, stacked when a chunk mixes images
            for start in range(0, len(prompts), step):
                stop = min(len(prompts), start + step)
                if owner[start] == owner[stop - 1]:  # one image's prompts: its features, shared
                    feats = features[group[owner[start]]]
                else:
                    if gather is None:
                        gather = [_stack_levels([features[i].levels[k] for i in group], self.device)
                                  for k in range(len(features[0].levels))]
                    index = torch.as_tensor(owner[start:stop], device=self.device)
                    feats = ImageFeatures.of([take(index) for take in gather])
                low, iou = self.decode(prompts[start:stop], feats)
                for i, first, last in zip(group, starts, ends):
                    lo, hi = max(first, start), min(last, stop)
                    if lo < hi:
                        results[i].append((low[lo - start:hi - start], iou[lo - start:hi - start]))
        return [(torch.cat([r[0] for r in parts]), torch.cat([r[1] for r in parts])) for parts in results]

    def _predict_prompts(self, point_coords, point_labels, boxes, mask_input, multimask_output, return_logits):
        prompts = PromptBatch.from_pixels(self.contract, self.original_size, point_coords, point_labels, boxes,
                                          mask_input, device=self.device)
        masks, scores, low = self._predict_torch(prompts, multimask_output, return_logits)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low.float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, prompts: PromptBatch, features: ImageFeatures | torch.Tensor | None = None, *,
               object_scores: bool = False) -> tuple[torch.Tensor, ...]:
        """Every output of the decoder for B prompts: low-res logits (B x 4 x 256 x 256) and predicted IoU
        (B x 4); token 0 is the single-mask output, 1..3 the multimask outputs (``choose_outputs`` picks).

        ``prompts``: a ``PromptBatch`` (``PromptBatch.from_pixels(predictor.contract, predictor.original_size,
        ...)``). ``features``: the embedding to decode against, one for all prompts or one per prompt; by
        default the image's, from ``set_image``. The one call to the engine's decoder: predict*, MaskGenerator,
        evaluation and benchmarks all decode here (training runs the model's modules itself, with gradients).
        ``object_scores``: also SAM 2's object-score logits (B x 1; the object is present where > 0).
        """
        if not isinstance(prompts, PromptBatch):
            raise InputError(f"decode takes a swiftsam.prompts.PromptBatch (PromptBatch.from_pixels(...)), "
                             f"got {type(prompts).__name__}.")
        if features is None:
            self._require_image()
            features = self.features
        outputs = self.engine.decode(ImageFeatures.of(features), *prompts.to(self.device).tensors())
        if object_scores:
            if not self.contract.object_score:
                raise InputError(f"{self.model.zoo_name or 'this model'} predicts no object score (SAM 2 models do).")
            return tuple(outputs[:3])
        return tuple(outputs[:2])

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
        if self.contract.low_res_clamp is not None:  # SAM 2 clamps the logits it returns, after upsampling masks
            low = low.clamp(-self.contract.low_res_clamp, self.contract.low_res_clamp)
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


def _stack_levels(parts: list[torch.Tensor], device: torch.device):
    """One feature level of several images, and a function that gathers its rows (one per prompt) in the memory
    layout the level has (channels-last on a CPU, which the decoder reads without a transposed copy)."""
    if parts[0].is_contiguous(memory_format=torch.channels_last) and not parts[0].is_contiguous():
        stacked = torch.cat([t.permute(0, 2, 3, 1) for t in parts]).to(device)  # N x h x w x C, contiguous
        return lambda index: stacked.index_select(0, index).permute(0, 3, 1, 2)
    stacked = torch.cat(parts).to(device)
    return lambda index: stacked.index_select(0, index)
