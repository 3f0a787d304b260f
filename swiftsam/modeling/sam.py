"""The promptable segmenter: image encoder + prompt encoder + mask decoder + its preprocessing."""

from __future__ import annotations

import torch
from torch import nn

from .contract import SAM_PIXEL_MEAN, SAM_PIXEL_STD, FeatureInfo, ImageSpec, ModelContract
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .segmenter import Segmenter
from .transformer import TwoWayTransformer

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "ImageSpec", "Sam", "Segmenter", "build_sam"]


class Sam(Segmenter):
    """SAM 1's promptable segmenter: any image encoder + SAM's prompt encoder and mask decoder, and its contract
    (``modeling.segmenter.Segmenter``). Module names equal the authors' checkpoint keys."""

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
        features = getattr(image_encoder, "feature_info", None) or (
            FeatureInfo("image_embeddings", prompt_encoder.embed_dim, prompt_encoder.image_embedding_size[0]),)
        self.contract = ModelContract(image=spec, features=tuple(features),
                                      mask_input_size=tuple(prompt_encoder.mask_input_size))
        self._register_pixel_stats(spec)

    def image_stage(self) -> nn.Module:
        return self.image_encoder

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
    """Wrap an image encoder with SAM's prompt encoder and mask decoder (shared by every family).

    The embedding's channels and grid come from the encoder's ``feature_info`` when it declares one
    (every swiftsam encoder does), else from ``embed_dim`` and ``grid``."""
    info = getattr(image_encoder, "feature_info", None)
    if info:
        embed_dim, grid = info[0].channels, info[0].size
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
