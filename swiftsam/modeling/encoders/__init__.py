"""Image encoders: each maps a normalised, padded S x S image to a 256 x 64 x 64 embedding."""

from .efficientvit import EfficientViTSamEncoder, build_efficientvit_sam_encoder
from .fpn_neck import FpnNeck, Sam2ImageEncoder, build_sam2_image_encoder
from .hiera import HIERA_CONFIGS, Hiera
from .resnet import ResNetSamEncoder
from .tiny_vit import TinyViT
from .vit import ImageEncoderViT

__all__ = [
    "EfficientViTSamEncoder",
    "FpnNeck",
    "HIERA_CONFIGS",
    "Hiera",
    "ImageEncoderViT",
    "ResNetSamEncoder",
    "Sam2ImageEncoder",
    "TinyViT",
    "build_efficientvit_sam_encoder",
    "build_sam2_image_encoder",
]
