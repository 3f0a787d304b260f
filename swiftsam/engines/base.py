"""What every engine provides: encode an image batch, decode flat prompts against an embedding."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..modeling.sam import Sam


class Engine(ABC):
    """Runs a model's image encoder and prompt decoder (``modeling.prompt_decoder.PromptDecoder``).

    Inputs and outputs are float32 torch tensors; outputs live on ``self.device``.
    """

    name: str = ""

    def __init__(self, model: Sam) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @abstractmethod
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalised, padded images -> B x 256 x 64 x 64 embeddings."""

    @abstractmethod
    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat prompts (B x N x 2, B x N, B x 1 x 256 x 256, B) -> low-res logits B x 4 x 256 x 256, IoU B x 4."""

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} for {self.model.zoo_name or 'model'}>"
