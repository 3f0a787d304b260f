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
from torch.nn import functional as F

from .common import MLP
from .contract import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, FeatureInfo, ImageSpec, ModelContract
from .encoders.fpn_neck import Sam2ImageEncoder, build_sam2_image_encoder
from .encoders.resnet import ResNetSamEncoder
from .memory_attention import build_memory_attention
from .memory_encoder import build_memory_encoder
from .position_encoding import PositionEmbeddingSine
from .prompt_encoder import PromptEncoder
from .sam2_mask_decoder import Sam2MaskDecoder, build_sam2_mask_decoder
from .segmenter import Segmenter
from .transformer import TwoWayTransformer

SAM2_VARIANTS = ("tiny", "small", "base_plus", "large")
BACKBONE_STRIDE = 16  # the image embedding's stride; the high-res levels are at strides 4 and 8
LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns to +-32


def sam2_image_spec(input_size: int = 1024) -> ImageSpec:
    """SAM 2's image: resized to S x S (no padding; prompts scale per axis), ImageNet mean / std."""
    return ImageSpec(input_size=input_size, prompt_size=input_size, pixel_mean=IMAGENET_PIXEL_MEAN,
                     pixel_std=IMAGENET_PIXEL_STD, geometry="square")


def sam2_features(input_size: int, embed_dim: int = 256, high_res: bool = True) -> tuple[FeatureInfo, ...]:
    """The image stage's levels: the embedding (stride 16), then the high-res levels (strides 4 and 8) unless
    the decoder uses none (SAM 2's ``use_high_res_features_in_sam=False``)."""
    embed = FeatureInfo("image_embed", embed_dim, input_size // BACKBONE_STRIDE)
    if not high_res:
        return (embed,)
    return (embed, FeatureInfo("high_res_feats_0", embed_dim // 8, input_size // 4),
            FeatureInfo("high_res_feats_1", embed_dim // 4, input_size // 8))


class Sam2ImageStage(nn.Module):
    """The ``encode`` stage of a SAM 2 model: trunk + neck, the decoder's projections of the stride-4 and
    stride-8 levels, and ``no_mem_embed`` added to the embedding (SAM 2's single-image path). Holds the
    model's own modules (no copies)."""

    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.high_res = model.sam_mask_decoder.use_high_res_features
        if self.high_res:
            self.conv_s0 = model.sam_mask_decoder.conv_s0
            self.conv_s1 = model.sam_mask_decoder.conv_s1
        self.no_mem_embed = model.no_mem_embed
        self.training = model.training  # the model's mode (a new module starts in training; engines fold BN in eval)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder = self.image_encoder
        if not isinstance(encoder, Sam2ImageEncoder):
            fpn = encoder(x)["backbone_fpn"]
            embedding = fpn[-1] + self.no_mem_embed.reshape(1, -1, 1, 1)
            if not self.high_res:  # one level: the decoder upsamples without skips
                return (embedding,)
            return embedding, self.conv_s0(fpn[0]), self.conv_s1(fpn[1])
        # Hiera + FPN: a high-resolution level that is its lateral 1x1 convolution alone reaches the decoder's
        # projection as one folded convolution (FpnNeck.project), the 256-channel map in between is never made
        neck, kept = encoder.neck, len(encoder.neck.convs) - encoder.scalp  # backbone_fpn: the first `kept` levels
        projections = ((0, self.conv_s0), (1, self.conv_s1)) if self.high_res else ()
        folded = [i for i, conv in projections if i < kept - 1 and neck.foldable(i, conv)]
        trunk = encoder.trunk(x)
        fpn = neck.features(trunk, skip=folded)
        embedding = fpn[kept - 1] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return (embedding, *(neck.project(i, trunk[i], conv) if i in folded else conv(fpn[i])
                             for i, conv in projections))


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
            image=spec, features=sam2_features(s, hidden_dim, sam_mask_decoder.use_high_res_features),
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
        if self.sam_mask_decoder.use_high_res_features:
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


# ----------------------------------------------------------------------------- swiftsam's own video model
class OwnVideoSam(Sam2):
    """swiftsam's own SAM-2-style video model (``swiftsam-r18-video``, docs/models.md): the project's image model
    (ResNet18 encoder, SAM's prompt encoder and mask decoder, their bundled weights unchanged and frozen) with
    SAM 2's memory encoder and memory attention trained on top.

    The decoder is SAM 2's with one level (``use_high_res_features=False``) and SAM 1's tokens (no object-score
    token), so a prompted frame segments exactly as with the image model. Two grids: the decoder attends to the
    encoder's embedding (64 x 64, whatever the input size, as the image model was trained); memories and memory
    attention work at stride 16 (S/16: 16 x 16 at 256 px, the information the encoder has at that size), on the
    embedding average-pooled to that grid. On a tracked frame the memory-conditioned features predict the object's
    mask there (``memory_prior``: logits at the mask-input grid, 4x the memory grid); the frozen decoder then
    refines it from the image embedding, prompted as the image model was trained: that mask as its mask input
    (clamped to +-``prior_clamp``) and its box. An empty prediction means the object is absent. The object
    pointers of SAM 2 are not used (the tracker's ``use_obj_ptrs_in_encoder`` is off for this model).
    """

    def __init__(self, image_encoder: ResNetSamEncoder, sam_prompt_encoder: PromptEncoder,
                 sam_mask_decoder: Sam2MaskDecoder, memory_attention: nn.Module, memory_encoder: nn.Module,
                 spec: ImageSpec, num_maskmem: int = 7, hidden_dim: int = 256, mem_dim: int = 64,
                 prior_dim: int = 64) -> None:
        super().__init__(image_encoder, sam_prompt_encoder, sam_mask_decoder, memory_attention, memory_encoder, spec,
                         num_maskmem=num_maskmem, hidden_dim=hidden_dim, mem_dim=mem_dim)
        grid = image_encoder.feature_info[0].size
        self.memory_grid = spec.input_size // BACKBONE_STRIDE
        if self.memory_grid < 1 or grid % self.memory_grid:
            raise ValueError(f"input size {spec.input_size}: the memory grid ({self.memory_grid}) must divide the "
                             f"embedding's grid ({grid})")
        self.obj_ptr_proj = nn.Identity()  # no object pointers: the decoder's token is kept as it is (unused)
        # memory-conditioned features -> mask logits at 4x the memory grid (pixel shuffle)
        self.memory_prior_head = nn.Sequential(
            nn.Conv2d(hidden_dim, prior_dim, kernel_size=3, padding=1), nn.GELU(), nn.Conv2d(prior_dim, 16, 1),
            nn.PixelShuffle(4),
        )
        self.prior_clamp = 8.0
        self.vision_pe = PositionEmbeddingSine(num_pos_feats=hidden_dim, normalize=True)
        self.contract = ModelContract(
            image=spec, features=(FeatureInfo("image_embeddings", hidden_dim, grid),),
            mask_input_size=tuple(sam_prompt_encoder.mask_input_size), object_score=True,
        )
        # the tracker's settings this model was trained with (VideoPredictor's defaults for it)
        self.video_defaults = {"multimask_output_for_tracking": False, "use_obj_ptrs_in_encoder": False}

    def image_stage(self) -> nn.Module:
        """The image model's encoder: its embedding, as the image model has it (no ``no_mem_embed``)."""
        return self.image_encoder

    def memory_level(self, embedding: torch.Tensor) -> torch.Tensor:
        """The embedding (B x C x 64 x 64) average-pooled to the memory grid (B x C x S/16 x S/16)."""
        return F.adaptive_avg_pool2d(embedding, self.memory_grid)

    def forward_backbone(self, x: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """The video path's features: ``vision_features`` / ``backbone_fpn`` at the memory grid with their sine
        position encoding (``vision_pos_enc``), and the decoder's embedding (``decoder_embed``)."""
        return self.backbone_from_embedding(self.image_encoder(x))

    def backbone_from_embedding(self, embed: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        vision = self.memory_level(embed)
        pos = self.vision_pe(vision).to(vision.dtype)
        return {"vision_features": vision, "vision_pos_enc": [pos], "backbone_fpn": [vision], "decoder_embed": embed}

    def memory_prior(self, conditioned: torch.Tensor) -> torch.Tensor:
        """Memory-conditioned features (B x C x g x g) -> the object's mask logits on this frame (B x 1 x 4g x 4g)."""
        return self.memory_prior_head(conditioned)


def build_own_video_sam(input_size: int = 256, *, memory_layers: int = 2, memory_ffn: int = 256,
                        fuser_layers: int = 1, num_maskmem: int = 7) -> OwnVideoSam:
    """``swiftsam-r18-video`` with random weights: the ResNet18 image model's encoder, prompt encoder and decoder
    (SAM 1's key names inside SAM 2's modules), smaller memory modules than SAM 2.1's (``memory_layers`` layers with
    a ``memory_ffn``-wide feed-forward block, ``fuser_layers`` ConvNeXt blocks in the memory encoder)."""
    if input_size % 32 or input_size < 64:
        raise ValueError(f"input size must be a multiple of 32 (>= 64), got {input_size}")
    encoder = ResNetSamEncoder("resnet18", img_size=input_size)
    spec = ImageSpec(input_size=input_size)
    grid = encoder.feature_info[0].size
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                   input_image_size=(input_size, input_size), mask_in_chans=16)
    decoder = Sam2MaskDecoder(
        transformer_dim=256, transformer=TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=False,
        iou_prediction_use_sigmoid=False, dynamic_multimask_via_stability=False, pred_obj_scores=False,
        use_multimask_token_for_obj_ptr=True,
    )
    memory_encoder = build_memory_encoder()
    memory_encoder.fuser.layers = memory_encoder.fuser.layers[:fuser_layers]
    return OwnVideoSam(encoder, prompt_encoder, decoder,
                       build_memory_attention(num_layers=memory_layers, dim_feedforward=memory_ffn),
                       memory_encoder, spec, num_maskmem=num_maskmem)
