"""What every promptable segmenter is to the rest of swiftsam: a contract, an image stage and prompt heads.

``Sam`` (SAM 1 families) and ``Sam2`` (SAM 2.1) both derive from ``Segmenter``: engines, export, the
Predictor and the applications see only what is here and in the model's contract.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..transforms import preprocess_image
from .contract import ImageSpec, ModelContract
from .features import ImageFeatures
from .stages import Stage, sam_stages


class Segmenter(nn.Module):
    """A promptable segmenter: its ``contract`` (``modeling.contract.ModelContract``), the image stage
    (``image_stage()``: the module that maps a normalised S x S image batch to the contract's feature levels),
    and ``prompt_encoder`` / ``mask_decoder`` (SAM's heads, or SAM 2's).

    ``contract`` is everything that runs the model needs besides the weights: image spec, feature layout,
    mask-input size, output policy and everything-mode defaults. The attributes ``spec``, ``zoo_name``,
    ``multimask_only``, ``box_mask_prior`` and ``everything_defaults`` read and write it (a frozen dataclass,
    replaced on write), so the contract saved with a checkpoint, an embedding file or an export manifest is
    always the one the model runs with.
    """

    mask_threshold: float = 0.0
    contract: ModelContract

    def _register_pixel_stats(self, spec: ImageSpec) -> None:
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
        """H x W x 3 uint8 RGB -> (1 x 3 x S x S normalised tensor, resized (h, w)), as the contract says."""
        return preprocess_image(image, self.spec, self.device)

    def image_stage(self) -> nn.Module:
        """The module of the ``encode`` stage: normalised B x 3 x S x S images -> the contract's feature levels
        (one tensor, or a tuple in the contract's order). Engines optimise it and export traces it."""
        raise NotImplementedError

    def forward_image(self, x: torch.Tensor) -> ImageFeatures:
        """Normalised, padded B x 3 x S x S images -> the encoder's feature levels (``contract.features``)."""
        return ImageFeatures.from_encoder(self.image_stage()(x), self.contract.features)
