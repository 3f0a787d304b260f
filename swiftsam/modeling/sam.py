"""The promptable segmenter: image encoder + prompt encoder + mask decoder + its preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..transforms import resize_longest_side
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its image: a property of the model, never of the caller."""

    input_size: int = 1024  # side of the square the encoder sees (after resize + pad)
    prompt_size: int = 1024  # side of the frame prompts and masks live in
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN  # in 0..255 units
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD


class Sam(nn.Module):
    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        spec: ImageSpec = ImageSpec(),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.spec = spec
        self.zoo_name: str | None = None  # set by swiftsam.build / swiftsam.load
        self.multimask_only = False  # True when the single-mask output token was never trained (TinySAM)
        # True for models trained to receive a box as a mask prior too (swiftsam's own): the Predictor then
        # passes prompts.box_prior_logits(box) as the mask input of every box prompt without one
        self.box_mask_prior = False
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (1 x 3 x S x S normalised, padded tensor; resized (h, w))."""
        resized = resize_longest_side(image, self.spec.input_size)
        x = torch.from_numpy(np.ascontiguousarray(resized)).to(self.device).permute(2, 0, 1)[None].float()
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = resized.shape[:2]
        s = self.spec.input_size
        return F.pad(x, (0, s - w, 0, s - h)), (h, w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(x)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the prompt frame -> low-res logits (B x M x 256 x 256), IoU predictions (B x M)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )


def build_sam(image_encoder: nn.Module, spec: ImageSpec, embed_dim: int = 256, grid: int = 64) -> Sam:
    """Wrap an image encoder with SAM's prompt encoder and mask decoder (shared by every family)."""
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(spec.prompt_size, spec.prompt_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        transformer_dim=embed_dim,
        transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(image_encoder, prompt_encoder, decoder, spec)
