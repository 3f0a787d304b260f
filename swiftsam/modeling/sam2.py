"""SAM 2.1: Hiera image encoder + FPN neck, SAM 2's prompt heads, and the memory modules its video path uses.

Module names equal the official checkpoints' keys (``torch.load(f)["model"]`` loads strictly): ``image_encoder``
(``trunk``, ``neck``), ``sam_prompt_encoder``, ``sam_mask_decoder`` (with ``conv_s0`` / ``conv_s1`` that project
the stride-4 and stride-8 levels for the decoder), ``memory_attention``, ``memory_encoder`` and the top-level
embeddings (``no_mem_embed``, ``maskmem_tpos_enc``, object-pointer projections ...).

For single images, SAM 2's predictor adds ``no_mem_embed`` to the stride-16 level, which becomes the image
embedding the decoder attends to; the image stage (``Sam2ImageStage``) returns that embedding and the two
projected high-resolution levels: ``image_embed`` (256 x S/16), ``high_res_feats_0`` (32 x S/4) and
``high_res_feats_1`` (64 x S/8), the interface of SAM 2's exported encoders. Every size derives from the input
size S (sam2 hard-codes those of 1024: its issue #138).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP
from .contract import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, FeatureInfo, ImageSpec, ModelContract
from .encoders.fpn_neck import Sam2ImageEncoder, build_sam2_image_encoder
from .memory_attention import build_memory_attention
from .memory_encoder import build_memory_encoder
from .prompt_encoder import PromptEncoder
from .sam2_mask_decoder import Sam2MaskDecoder, build_sam2_mask_decoder
from .segmenter import Segmenter

SAM2_VARIANTS = ("tiny", "small", "base_plus", "large")
BACKBONE_STRIDE = 16  # the image embedding's stride; the high-res levels are at strides 4 and 8
LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns to +-32


def sam2_image_spec(input_size: int = 1024) -> ImageSpec:
    """SAM 2's image: resized to S x S (no padding; prompts scale per axis), ImageNet mean / std."""
    return ImageSpec(input_size=input_size, prompt_size=input_size, pixel_mean=IMAGENET_PIXEL_MEAN,
                     pixel_std=IMAGENET_PIXEL_STD, geometry="square")


def sam2_features(input_size: int, embed_dim: int = 256) -> tuple[FeatureInfo, ...]:
    """The image stage's levels: the embedding (stride 16), then the high-res levels (strides 4 and 8)."""
    return (FeatureInfo("image_embed", embed_dim, input_size // BACKBONE_STRIDE),
            FeatureInfo("high_res_feats_0", embed_dim // 8, input_size // 4),
            FeatureInfo("high_res_feats_1", embed_dim // 4, input_size // 8))


class Sam2ImageStage(nn.Module):
    """The ``encode`` stage of a SAM 2 model: trunk + neck, the decoder's projections of the stride-4 and
    stride-8 levels, and ``no_mem_embed`` added to the embedding (SAM 2's single-image path). Holds the
    model's own modules (no copies)."""

    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1
        self.no_mem_embed = model.no_mem_embed

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.image_encoder(x)["backbone_fpn"]
        embedding = fpn[-1] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embedding, self.conv_s0(fpn[0]), self.conv_s1(fpn[1])


class Sam2(Segmenter):
    """A SAM 2.1 model (``modeling.segmenter.Segmenter``): the image path runs as any swiftsam model (its contract
    declares three feature levels, SAM 2's square geometry and prompt format, dynamic multimask, the object score);
    the memory modules' weights load now and serve the video predictor."""

    def __init__(
        self,
        image_encoder: Sam2ImageEncoder,
        sam_prompt_encoder: PromptEncoder,
        sam_mask_decoder: Sam2MaskDecoder,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        spec: ImageSpec,
        num_maskmem: int = 7,
        hidden_dim: int = 256,
        mem_dim: int = 64,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.num_maskmem = num_maskmem
        # temporal encodings of the mask memories, and the embeddings that stand in for missing memory / objects
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden_dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        # object pointers: the decoder's output token -> a pointer; its temporal position -> memory width
        self.obj_ptr_proj = MLP(hidden_dim, hidden_dim, hidden_dim, 3)
        self.obj_ptr_tpos_proj = nn.Linear(hidden_dim, mem_dim)
        # a mask given as the output of a conditioning frame, downsampled to the low-res logits' size
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr,
                  self.no_obj_embed_spatial):
            nn.init.trunc_normal_(p, std=0.02)
        s = spec.input_size
        self.contract = ModelContract(
            image=spec, features=sam2_features(s, hidden_dim),
            mask_input_size=tuple(sam_prompt_encoder.mask_input_size),
            dynamic_multimask=sam_mask_decoder.dynamic_multimask_via_stability,
            dynamic_multimask_delta=sam_mask_decoder.dynamic_multimask_stability_delta,
            dynamic_multimask_thresh=sam_mask_decoder.dynamic_multimask_stability_thresh,
            box_as_points=True, object_score=True, low_res_clamp=LOW_RES_CLAMP,
        )
        self._register_pixel_stats(spec)

    # the names every swiftsam model's prompt heads go by (PromptDecoder, training, export)
    @property
    def prompt_encoder(self) -> PromptEncoder:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        return self.sam_mask_decoder

    def image_stage(self) -> Sam2ImageStage:
        return Sam2ImageStage(self)

    def forward_backbone(self, x: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """SAM2Base.forward_image: the image encoder's outputs (``vision_features``, ``vision_pos_enc``,
        ``backbone_fpn``) with the stride-4 and stride-8 levels projected for the decoder; no ``no_mem_embed``
        (the video path conditions on memories instead)."""
        out = self.image_encoder(x)
        fpn = list(out["backbone_fpn"])
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return {**out, "backbone_fpn": fpn}


def build_sam2(variant: str, depth: tuple[int, ...] | None = None, input_size: int = 1024) -> Sam2:
    """A randomly initialised SAM 2.1 model: ``variant`` tiny / small / base_plus / large; ``depth`` the trunk's
    blocks per stage (reduced-depth tests); ``input_size`` a multiple of 32 (feature sizes follow from it)."""
    if input_size % 32 or input_size < 64:
        raise ValueError(f"SAM 2's input size must be a multiple of 32 (>= 64), got {input_size}")
    spec = sam2_image_spec(input_size)
    grid = input_size // BACKBONE_STRIDE
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                   input_image_size=(input_size, input_size), mask_in_chans=16)
    return Sam2(build_sam2_image_encoder(variant, depth), prompt_encoder, build_sam2_mask_decoder(),
                build_memory_attention(), build_memory_encoder(), spec)
