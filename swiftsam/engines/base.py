"""What every engine provides: encode an image batch, decode flat prompts against an embedding."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..modeling.features import ImageFeatures
from ..modeling.segmenter import Segmenter


class Engine(ABC):
    """Runs a model's image stage and prompt decoder (``modeling.prompt_decoder.PromptDecoder``): its ``encode``
    and ``decode`` stages (``modeling.stages``).

    Inputs and outputs are float32 torch tensors; outputs live on ``self.device``.
    """

    name: str = ""
    max_prompts: int | None = None  # prompts one decode call takes at most (TensorRT's profile); None: any number

    def __init__(self, model: Segmenter) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @abstractmethod
    def encode(self, image: torch.Tensor) -> ImageFeatures:
        """B x 3 x S x S normalised images -> the contract's feature levels (SAM 1: B x 256 x 64 x 64 embeddings;
        SAM 2: the embedding and two higher-resolution levels)."""

    @abstractmethod
    def decode(
        self,
        features: ImageFeatures,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Features (1 image for all prompts, or one per prompt) and flat prompts (B x N x 2, B x N,
        B x 1 x 256 x 256, B) -> the ``decode`` stage's outputs: low-res logits B x 4 x 256 x 256, IoU B x 4
        (and SAM 2's object-score logits B x 1)."""

    def adopt(self, features: ImageFeatures) -> ImageFeatures:
        """Features from elsewhere (an embedding file, the model's own ``forward_image``) on this engine's device
        and in the memory layout its ``encode`` hands over, which its ``decode`` reads fastest."""
        return features.map(lambda t: t.to(self.device))

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} for {self.model.zoo_name or 'model'}>"


class StageEngine(Engine):
    """An engine that runs the model's stages as graphs, feeding and reading tensors by the stages' names
    (onnxruntime, TensorRT, OpenVINO): ``_run(stage, *inputs)`` is all it implements."""

    @abstractmethod
    def _run(self, stage: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run ``stage`` (``model.stages[stage]``) on its inputs, in the stage's order; its outputs, in order."""

    def encode(self, image: torch.Tensor) -> ImageFeatures:
        return ImageFeatures.of(self._run("encode", image))

    def decode(self, features, point_coords, point_labels, mask_input, has_mask_input):
        features = ImageFeatures.of(features)
        return tuple(self._run("decode", features.embedding, point_coords, point_labels, mask_input, has_mask_input,
                               *features.high_res))
