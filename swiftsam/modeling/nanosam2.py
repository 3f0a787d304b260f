"""nanosam2's students: SAM 2.1 with a small CNN trunk in place of Hiera, to be distilled from a SAM 2.1 teacher.

A student is a :class:`~swiftsam.modeling.sam2.Sam2` whose ``image_encoder`` is a
:class:`~swiftsam.modeling.encoders.fpn_neck.Sam2ImageEncoder` (trunk + ``FpnNeck``, ``scalp=1``): the trunk
(ResNet18, or MobileNetV3-Large) returns four levels at strides 4, 8, 16, 32, high resolution first; the neck
projects each to 256 channels and fuses every level top-down with the 2x-upsampled level below it (a classic
FPN: unlike Hiera, whose stride-4 and stride-8 stages the teacher's neck leaves unfused, a CNN trunk's early
stages are shallow, so they get the deeper levels' context); ``scalp=1`` then drops the stride-32 level, whose
content has been fused into stride 16. The image encoder's outputs are thus the teacher's: strides 4, 8, 16 at
256 channels (``backbone_fpn``, ``vision_pos_enc``, ``vision_features``), every size following the input size.

Everything else -- the decoder's ``conv_s0`` / ``conv_s1``, the prompt encoder, the mask decoder, the memory
attention and encoder and the top-level embeddings -- is built exactly as ``build_sam2`` builds it, under the
same names, so a SAM 2.1 teacher's non-encoder weights load into the student unchanged, and the trunks' names
are torchvision's (``image_encoder.trunk.*`` takes a torchvision ResNet18 state dict without ``fc``, or
MobileNetV3-Large's ``features.*``).
"""

from __future__ import annotations

from torch import nn

from .encoders.fpn_neck import FpnNeck, Sam2ImageEncoder
from .encoders.mobilenetv3 import MobileNetV3Large
from .encoders.resnet import ResNetLevels
from .memory_attention import build_memory_attention
from .memory_encoder import build_memory_encoder
from .position_encoding import PositionEmbeddingSine
from .prompt_encoder import PromptEncoder
from .sam2 import BACKBONE_STRIDE, Sam2, sam2_image_spec
from .sam2_mask_decoder import build_sam2_mask_decoder

NANOSAM2_BACKBONES = ("resnet18", "mobilenetv3")
# the neck's levels that add the 2x-upsampled level below them (0 = stride 4 ... 3 = stride 32): all of them
TOP_DOWN_LEVELS = (0, 1, 2, 3)


def build_nanosam2_trunk(backbone: str) -> nn.Module:
    """The student's trunk: four levels (strides 4, 8, 16, 32) high resolution first, ``channel_list`` lowest
    resolution first."""
    if backbone == "resnet18":
        return ResNetLevels("resnet18")
    if backbone == "mobilenetv3":
        return MobileNetV3Large()
    raise ValueError(f"unknown nanosam2 backbone {backbone!r}; choose one of {', '.join(NANOSAM2_BACKBONES)}")


def build_nanosam2_image_encoder(backbone: str) -> Sam2ImageEncoder:
    """Trunk + FPN neck (256 channels, every level fused top-down, the teacher's sine position encoding) with the
    stride-32 level dropped: SAM 2.1's three levels at strides 4, 8, 16."""
    trunk = build_nanosam2_trunk(backbone)
    neck = FpnNeck(d_model=256, backbone_channel_list=trunk.channel_list, fpn_top_down_levels=TOP_DOWN_LEVELS,
                   fpn_interp_model="nearest",
                   position_encoding=PositionEmbeddingSine(256, temperature=10000, normalize=True, scale=None))
    return Sam2ImageEncoder(trunk, neck, scalp=1)


def build_nanosam2(backbone: str = "resnet18", input_size: int = 1024) -> Sam2:
    """A randomly initialised nanosam2 student: ``backbone`` "resnet18" or "mobilenetv3" (Large); ``input_size``
    a multiple of 32 (>= 64; the feature sizes follow it). The heads and memory modules are SAM 2.1's
    (``build_sam2``'s)."""
    if input_size % 32 or input_size < 64:
        raise ValueError(f"nanosam2's input size must be a multiple of 32 (>= 64), got {input_size}")
    input_size = int(input_size)
    spec = sam2_image_spec(input_size)
    grid = input_size // BACKBONE_STRIDE
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                   input_image_size=(input_size, input_size), mask_in_chans=16)
    return Sam2(build_nanosam2_image_encoder(backbone), prompt_encoder, build_sam2_mask_decoder(),
                build_memory_attention(), build_memory_encoder(), spec)
