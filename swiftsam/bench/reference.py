"""The authors' reference implementations, with the weights of a swiftsam model, for side-by-side timing.

Which package is the reference for which zoo family:

- ``sam`` (SAM ViT-B/L/H): ``segment_anything`` (``pip install segment-anything``);
- ``tinyvit`` (MobileSAM, TinySAM): ``mobile_sam`` (``pip install mobilesam-mirror``); TinySAM's own
  code is not on PyPI and its model is MobileSAM's architecture;
- ``efficientvit`` (EfficientViT-SAM L0-XL1): ``efficientsam`` (``pip install --no-deps efficientsam``);
- ``nanosam``: none. NanoSAM ships TensorRT engines and no eager PyTorch model.

The reference model is built by the authors' own builder and given the swiftsam model's state dict
(the key layouts are equal, ``tests/test_equivalence.py`` proves the outputs are too). These packages
import torchvision (and efficientsam timm) at import time, so they need a torch/torchvision pair
that loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import EngineError
from ..modeling.sam import Sam
from ..zoo import get_entry
from .workloads import Workload

PACKAGES = {"sam": "segment-anything", "tinyvit": "mobilesam-mirror", "efficientvit": "efficientsam"}
NO_REFERENCE = {"nanosam": "NanoSAM publishes TensorRT engines only, no eager PyTorch reference"}


def _import(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except Exception as e:  # ImportError, or a torchvision built for another torch failing to load
        raise EngineError(
            f"--compare-reference needs the reference package {package!r} (import {module.split('.')[0]}), "
            f"which failed to import: {type(e).__name__}: {e}. Install it (pip install {package}) with a "
            f"torchvision that matches your torch, or run without --compare-reference."
        ) from None


def why_no_reference(name: str) -> str | None:
    """Why zoo model ``name`` has no reference implementation, or None when it has one."""
    family = get_entry(name).family
    if family in PACKAGES:
        return None
    return NO_REFERENCE.get(family, f"no reference implementation is known for the {family} family")


def build_reference(name: str) -> tuple[torch.nn.Module, str]:
    """The authors' model for zoo model ``name`` (random weights) and the package it came from."""
    entry = get_entry(name)
    family = entry.family
    if family == "sam":
        registry = _import("segment_anything", PACKAGES[family]).sam_model_registry
        return registry["vit_" + entry.name.rsplit("-", 1)[1]](), "segment_anything"
    if family == "tinyvit":
        return _import("mobile_sam", PACKAGES[family]).sam_model_registry["vit_t"](), "mobile_sam"
    if family == "efficientvit":
        zoo = _import("efficientsam.sam_model_zoo", PACKAGES[family])
        return zoo.create_efficientvit_sam_model(entry.name, pretrained=False), "efficientsam"
    raise EngineError(f"{name} has no reference implementation: {why_no_reference(name)}.")


class ReferenceWorkloads:
    """The reference model and predictor for a swiftsam model, holding the same weights."""

    def __init__(self, ours: Sam) -> None:
        if ours.zoo_name is None:
            raise EngineError("the reference comparison needs a zoo model (swiftsam.build or swiftsam.load).")
        self.model, self.module = build_reference(ours.zoo_name)
        missing, unexpected = self.model.load_state_dict(ours.state_dict(), strict=False)
        ignore = get_entry(ours.zoo_name).ignore_keys  # e.g. TinyViT's unused classification head
        missing = [k for k in missing if not (ignore and k.startswith(ignore))]
        if missing or unexpected:
            raise EngineError(f"{ours.zoo_name}: the reference model's keys differ from swiftsam's "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
        self.model.to(ours.device).eval()
        self.prompt_size = ours.spec.prompt_size
        if self.module == "efficientsam":
            from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

            self.predictor = EfficientViTSamPredictor(self.model)
        else:
            self.predictor = __import__(self.module, fromlist=["SamPredictor"]).SamPredictor(self.model)

    def encoder(self, batch: torch.Tensor) -> Workload:
        encoder = self.model.image_encoder

        def run():
            with torch.inference_mode():
                return encoder(batch)

        return run

    def decoder(self, embedding: torch.Tensor, boxes: np.ndarray, image_size: tuple[int, int]) -> Workload:
        from ..transforms import to_prompt_frame

        frame = torch.as_tensor(to_prompt_frame(boxes.reshape(-1, 2, 2), image_size, self.prompt_size).reshape(-1, 4),
                                dtype=torch.float32, device=embedding.device)
        m = self.model

        def run():
            with torch.inference_mode():
                sparse, dense = m.prompt_encoder(points=None, boxes=frame, masks=None)
                return m.mask_decoder(image_embeddings=embedding, image_pe=m.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=True)

        return run

    def pipeline(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Workload:
        """The reference's own batched path where it has one (``Sam.forward`` of segment_anything and
        mobile_sam: resize with its transform, preprocess, encode the batch, decode, postprocess),
        else its predictor one image at a time (efficientsam's model has no postprocessing path)."""
        if self.module == "efficientsam":
            return self._predictor_loop(images, boxes)
        transforms = __import__(f"{self.module}.utils.transforms", fromlist=["ResizeLongestSide"])
        resize = transforms.ResizeLongestSide(self.model.image_encoder.img_size)
        dev = next(self.model.parameters()).device

        def run():
            batched = []
            for image, box in zip(images, boxes):
                x = torch.as_tensor(resize.apply_image(image), device=dev).permute(2, 0, 1).contiguous()
                b = resize.apply_boxes_torch(torch.as_tensor(box[None], dtype=torch.float32, device=dev),
                                             image.shape[:2])
                batched.append({"image": x, "original_size": image.shape[:2], "boxes": b})
            with torch.inference_mode():
                return [o["masks"] for o in self.model(batched, multimask_output=False)]

        return run

    def _predictor_loop(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Callable[[], object]:
        def run():
            out = []
            for image, box in zip(images, boxes):
                self.predictor.set_image(image)
                out.append(self.predictor.predict(box=box, multimask_output=False)[0])
            return out

        return run
