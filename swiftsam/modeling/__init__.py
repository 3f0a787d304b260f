"""Model code: encoders, prompt encoder, two-way transformer, mask decoder, and the Sam wrapper."""

from .contract import FeatureInfo, ModelContract
from .features import ImageFeatures
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import ImageSpec, Sam, build_sam
from .transformer import TwoWayTransformer

__all__ = ["FeatureInfo", "ImageFeatures", "ImageSpec", "ModelContract", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer", "build_sam"]
