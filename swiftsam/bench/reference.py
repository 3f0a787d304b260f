"""The authors' reference implementations, with the weights of a swiftsam model, for side-by-side timing.

Which package is the reference for which zoo family:

- ``sam`` (SAM ViT-B/L/H): ``segment_anything`` (``pip install segment-anything``);
- ``tinyvit`` (MobileSAM, TinySAM): ``mobile_sam`` (``pip install mobilesam-mirror``); TinySAM's own
  code is not on PyPI and its model is MobileSAM's architecture;
- ``efficientvit`` (EfficientViT-SAM L0-XL1): ``efficientsam`` (``pip install --no-deps efficientsam``);
- ``sam2`` (SAM 2.1 Hiera t / s / b+ / l): ``sam2`` (``SAM2_BUILD_CUDA=0 pip install --no-deps sam2`` plus
  ``hydra-core`` and ``iopath``), timed through its ``SAM2ImagePredictor``; built with
  ``apply_postprocessing=False`` (its hole filling needs its CUDA extension) and the dynamic-multimask settings
  that option would add, which our contract's output policy has too;
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
from ..modeling.features import ImageFeatures
from ..modeling.sam import Sam
from ..modeling.segmenter import Segmenter
from ..zoo import get_entry
from .workloads import Workload

PACKAGES = {"sam": "segment-anything", "tinyvit": "mobilesam-mirror", "efficientvit": "efficientsam",
            "sam2": "sam2"}
# zoo variant -> the suffix of sam2's config file (configs/sam2.1/sam2.1_hiera_<suffix>.yaml)
SAM2_CONFIGS = {"tiny": "t", "small": "s", "base-plus": "b+", "large": "l"}
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
    if family == "sam2":  # configured from the swiftsam model itself (depth, input size)
        raise EngineError(f"{name}: sam2's reference is built from the swiftsam model: use "
                          f"reference_workloads(model) (swiftsam.bench.reference).")
    raise EngineError(f"{name} has no reference implementation: {why_no_reference(name)}.")


def reference_workloads(ours: Segmenter) -> ReferenceWorkloads | Sam2ReferenceWorkloads:
    """The reference workloads for swiftsam model ``ours`` (a zoo model), holding its weights."""
    if ours.zoo_name is not None and get_entry(ours.zoo_name).family == "sam2":
        return Sam2ReferenceWorkloads(ours)
    return ReferenceWorkloads(ours)


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

    def decoder(self, embedding: ImageFeatures | torch.Tensor, boxes: np.ndarray, image_size: tuple[int, int]
                ) -> Workload:
        from ..transforms import to_prompt_frame

        embedding = ImageFeatures.of(embedding).embedding
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


class Sam2ReferenceWorkloads:
    """sam2's ``SAM2ImagePredictor`` on the weights of a swiftsam SAM 2.1 model (reduced trunk depths and other
    input sizes too: the reference is configured from the model, and its predictor's feature sizes, hard-coded for
    1024 in sam2 1.1.0, are set from our contract)."""

    module = "sam2"

    def __init__(self, ours: Segmenter) -> None:
        if ours.zoo_name is None:
            raise EngineError("the reference comparison needs a zoo model (swiftsam.build or swiftsam.load).")
        build = _import("sam2.build_sam", PACKAGES["sam2"]).build_sam2
        predictor_cls = _import("sam2.sam2_image_predictor", PACKAGES["sam2"]).SAM2ImagePredictor
        variant = ours.zoo_name.removeprefix("sam2.1-hiera-")
        if variant not in SAM2_CONFIGS:
            raise EngineError(f"{ours.zoo_name}: no sam2 config is known for it (known: {', '.join(SAM2_CONFIGS)}).")
        contract, trunk = ours.contract, ours.image_encoder.trunk
        extra = "++model.sam_mask_decoder_extra_args"
        overrides = [
            f"++model.image_size={contract.image.input_size}",
            f"++model.image_encoder.trunk.stages=[{','.join(map(str, trunk.stages))}]",
            f"++model.image_encoder.trunk.global_att_blocks=[{','.join(map(str, trunk.global_att_blocks))}]",
            f"{extra}.dynamic_multimask_via_stability={str(contract.dynamic_multimask).lower()}",
            f"{extra}.dynamic_multimask_stability_delta={contract.dynamic_multimask_delta}",
            f"{extra}.dynamic_multimask_stability_thresh={contract.dynamic_multimask_thresh}",
        ]
        try:
            self.model = build(f"configs/sam2.1/sam2.1_hiera_{SAM2_CONFIGS[variant]}.yaml", None,
                               device=str(ours.device), hydra_overrides_extra=overrides, apply_postprocessing=False)
            self.model.load_state_dict(ours.state_dict(), strict=True)
        except Exception as e:  # hydra's config errors, or keys that differ
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise EngineError(f"{ours.zoo_name}: could not build sam2's model with swiftsam's weights: "
                              f"{type(e).__name__}: {first}") from None
        self.model.eval()
        self.predictor = predictor_cls(self.model)
        # SAM2ImagePredictor hard-codes the feature sizes of 1024 inputs (sam2 issue #138): ours follow the size
        levels = contract.features  # image_embed (stride 16), high_res_feats_0 (4), high_res_feats_1 (8)
        self.predictor._bb_feat_sizes = [(f.size, f.size) for f in (levels[1], levels[2], levels[0])]

    def encoder(self, batch: torch.Tensor) -> Workload:
        """SAM2ImagePredictor.set_image_batch after its transforms: backbone, the model's feature preparation,
        ``no_mem_embed``, and the reshape to the three levels."""
        m, sizes = self.model, self.predictor._bb_feat_sizes

        def run():
            with torch.inference_mode():
                _, feats, _, _ = m._prepare_backbone_features(m.forward_image(batch))
                if m.directly_add_no_mem_embed:
                    feats[-1] = feats[-1] + m.no_mem_embed
                return [f.permute(1, 2, 0).view(batch.shape[0], -1, *s) for f, s in zip(feats[::-1], sizes[::-1])][::-1]

        return run

    def decoder(self, embedding: ImageFeatures | torch.Tensor, boxes: np.ndarray, image_size: tuple[int, int]
                ) -> Workload:
        """SAM2ImagePredictor._predict for ``n`` boxes on one image's features, up to the low-res logits and IoU
        (the prompt transform done once, outside the timing, as for the other families)."""
        features = ImageFeatures.of(embedding)
        emb, high_res = features.embedding, list(features.high_res)
        dev = emb.device
        coords = self.predictor._transforms.transform_boxes(
            torch.as_tensor(boxes, dtype=torch.float32, device=dev), normalize=True, orig_hw=tuple(image_size))
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=dev).repeat(len(boxes), 1)
        m = self.model

        def run():
            with torch.inference_mode():
                sparse, dense = m.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
                return m.sam_mask_decoder(image_embeddings=emb, image_pe=m.sam_prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=True, repeat_image=len(boxes) > 1,
                                          high_res_features=high_res)[:2]

        return run

    def pipeline(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> Workload:
        """The predictor's own batched path: set_image_batch (transforms, encoder) and predict_batch with one box
        per image, single-mask output, binary masks at the original size."""
        predictor = self.predictor

        def run():
            predictor.set_image_batch(list(images))
            return predictor.predict_batch(box_batch=list(boxes), multimask_output=False)[0]

        return run
