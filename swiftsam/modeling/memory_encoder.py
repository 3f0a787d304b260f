"""SAM 2's memory encoder: a frame's features fused with its predicted mask into a 64-wide memory."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .common import LayerNorm2d
from .position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Mask (B x 1 x H x W) -> B x ``embed_dim`` x H/total_stride x W/total_stride.

    ``log_stride(total_stride)`` stages of conv (``stride``), LayerNorm2d and activation, each
    multiplying the channels by ``stride**2``, then a 1x1 projection (module names equal sam2's:
    ``encoder.0`` .. ``encoder.{3n}``).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_layers = round(math.log(total_stride) / math.log(stride))
        if stride**num_layers != total_stride:
            raise ValueError(f"total_stride={total_stride} is not a power of stride={stride}")
        layers: list[nn.Module] = []
        chans = 1
        for _ in range(num_layers):
            out = chans * stride**2
            layers += [
                nn.Conv2d(chans, out, kernel_size=kernel_size, stride=stride, padding=padding),
                LayerNorm2d(out),
                activation(),
            ]
            chans = out
        layers.append(nn.Conv2d(chans, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm, pointwise MLP (as linear layers), layer scale, residual."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # N C H W -> N H W C
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        y = y.permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0:  # stochastic depth, per sample
            keep = 1.0 - self.drop_path
            y = y * torch.bernoulli(y.new_full((y.shape[0], 1, 1, 1), keep)) / keep
        return x + y


class Fuser(nn.Module):
    """An optional 1x1 input projection and ``num_layers`` copies of ``layer``."""

    def __init__(self, layer: nn.Module, num_layers: int, dim: int | None = None, input_projection: bool = False):
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        if input_projection:
            if dim is None:
                raise ValueError("Fuser(input_projection=True) needs dim")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Frame features (B x in_dim x h x w) + mask logits (B x 1 x 16h x 16w) -> memory (B x out_dim x h x w)
    and its position encoding. Module names equal sam2's (``memory_encoder.*``)."""

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = nn.Identity()
        if out_dim != in_dim:
            self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def encode(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory features, position encoding in their dtype). ``masks`` are logits, squashed with a
        sigmoid first unless ``skip_mask_sigmoid`` (the caller already scaled them into [0, 1])."""
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x).to(x.dtype)

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """sam2's result: ``{"vision_features": memory, "vision_pos_enc": [position encoding]}``."""
        x, pos = self.encode(pix_feat, masks, skip_mask_sigmoid)
        return {"vision_features": x, "vision_pos_enc": [pos]}


def build_memory_encoder(*, out_dim: int = 64, in_dim: int = 256) -> MemoryEncoder:
    """SAM 2.1's memory encoder (the same for hiera t / s / b+ / l): mask downsampler of four 3x3 stride-2
    stages, two ConvNeXt blocks (7x7 depthwise, layer scale), 64-wide output, sine position encoding."""
    return MemoryEncoder(
        out_dim=out_dim,
        mask_downsampler=MaskDownSampler(embed_dim=in_dim, kernel_size=3, stride=2, padding=1, total_stride=16),
        fuser=Fuser(CXBlock(in_dim, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True), 2),
        position_encoding=PositionEmbeddingSine(num_pos_feats=out_dim, normalize=True, scale=None, temperature=10000),
        in_dim=in_dim,
    )
