"""Image encoders: each maps a normalised, padded S x S image to a 256 x 64 x 64 embedding."""

from .efficientvit import EfficientViTSamEncoder, build_efficientvit_sam_encoder
from .resnet import ResNetSamEncoder
from .tiny_vit import TinyViT
from .vit import ImageEncoderViT

__all__ = [
    "EfficientViTSamEncoder",
    "ImageEncoderViT",
    "ResNetSamEncoder",
    "TinyViT",
    "build_efficientvit_sam_encoder",
]
