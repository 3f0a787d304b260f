"""The promptable segmenter: image encoder + prompt encoder + mask decoder + its preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..transforms import preprocess_image
from .contract import SAM_PIXEL_MEAN, SAM_PIXEL_STD, FeatureInfo, ImageSpec, ModelContract
from .features import ImageFeatures
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .stages import Stage, sam_stages
from .transformer import TwoWayTransformer

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "ImageSpec", "Sam", "build_sam"]


class Sam(nn.Module):
    """A promptable segmenter: image encoder + SAM's prompt encoder and mask decoder, and its contract.

    ``contract`` (``modeling.contract.ModelContract``) is everything that runs the model needs besides the
    weights: image spec, feature layout, mask-input size, output policy and everything-mode defaults. The
    attributes ``spec``, ``zoo_name``, ``multimask_only``, ``box_mask_prior`` and ``everything_defaults``
    read and write it (a frozen dataclass, replaced on write), so the contract saved with a checkpoint, an
    embedding file or an export manifest is always the one the model runs with.
    """

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
        features = getattr(image_encoder, "feature_info", None) or (
            FeatureInfo("image_embeddings", prompt_encoder.embed_dim, prompt_encoder.image_embedding_size[0]),)
        self.contract = ModelContract(image=spec, features=tuple(features),
                                      mask_input_size=tuple(prompt_encoder.mask_input_size))
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std).view(-1, 1, 1), persistent=False)

    # the contract's fields, as attributes (each write replaces the frozen contract)
    @property
    def spec(self) -> ImageSpec:
        return self.contract.image

    @property
    def zoo_name(self) -> str | None:  # set by swiftsam.build / swiftsam.load
        return self.contract.name

    @zoo_name.setter
    def zoo_name(self, value: str | None) -> None:
        self.contract = self.contract.replace(name=value)

    @property
    def multimask_only(self) -> bool:  # the single-mask output token was never trained (TinySAM)
        return self.contract.multimask_only

    @multimask_only.setter
    def multimask_only(self, value: bool) -> None:
        self.contract = self.contract.replace(multimask_only=bool(value))

    @property
    def box_mask_prior(self) -> bool:
        """Trained to receive a box as a mask prior too (swiftsam's own): the Predictor then passes
        ``prompts.box_prior_logits(box)`` as the mask input of every box prompt without one."""
        return self.contract.box_mask_prior

    @box_mask_prior.setter
    def box_mask_prior(self, value: bool) -> None:
        self.contract = self.contract.replace(box_mask_prior=bool(value))

    @property
    def everything_defaults(self) -> dict:
        return self.contract.everything_defaults

    @everything_defaults.setter
    def everything_defaults(self, value: dict | None) -> None:
        self.contract = self.contract.replace(everything=dict(value or {}))

    @property
    def stages(self) -> dict[str, Stage]:
        """The graphs engines run and export traces (``modeling.stages.Stage`` by name: encode, decode, ...)."""
        return sam_stages(self.contract)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (1 x 3 x S x S normalised, padded tensor; resized (h, w))."""
        return preprocess_image(image, self.spec, self.device)

    def forward_image(self, x: torch.Tensor) -> ImageFeatures:
        """Normalised, padded B x 3 x S x S images -> the encoder's feature levels (``contract.features``)."""
        return ImageFeatures.from_encoder(self.image_encoder(x), self.contract.features)

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
