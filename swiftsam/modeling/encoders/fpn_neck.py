"""SAM 2 / SAM 2.1's image encoder: a Hiera trunk and an FPN neck.

Module names follow the official checkpoints (``image_encoder.trunk.*``, ``image_encoder.neck.*``), so
their ``image_encoder.*`` weights load unchanged into :class:`Sam2ImageEncoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InputError
from ..position_encoding import PositionEmbeddingSine
from .hiera import HIERA_CONFIGS, Hiera, reduced_global_att_blocks

_INTERP_MODES = ("nearest", "bilinear", "bicubic")


def _pointwise(conv: nn.Module) -> bool:
    """A plain 1x1 convolution (no stride, padding, dilation or groups): a per-pixel linear map."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)


class FpnNeck(nn.Module):
    """Feature pyramid without output convolutions, as in SAM 2.

    Each trunk level gets a 1x1 lateral convolution to ``d_model`` channels (``convs[j]`` takes
    ``backbone_channel_list[j]``, lowest resolution first). Going from low to high resolution, a level in
    ``fpn_top_down_levels`` (numbered high resolution first, 0 = stride 4) adds the 2x-upsampled output of
    the level below it; the others keep their lateral features only. ``forward(xs)`` takes the trunk's
    outputs high resolution first and returns ``(features, position_encodings)`` in the same order.
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: Sequence[int],
        fpn_top_down_levels: Sequence[int] | None = None,
        fpn_interp_model: str = "nearest",
        fuse_type: str = "sum",
        position_encoding: nn.Module | None = None,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        if fpn_interp_model not in _INTERP_MODES:
            raise ValueError(f"fpn_interp_model must be one of {_INTERP_MODES}, got {fpn_interp_model!r}")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding if position_encoding is not None else PositionEmbeddingSine(d_model)
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=kernel_size, stride=stride,
                                                 padding=padding))
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = [int(i) for i in levels]
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def _position(self, x: torch.Tensor) -> torch.Tensor:
        """The position encoding of level ``x`` in its dtype. It depends on the shape only, so without autograd
        (inference: the image path does not even use it) one C x H x W copy per size / dtype / device is kept and
        expanded over the batch; with autograd, while tracing or compiling, it is computed afresh."""
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.position_encoding(x).to(x.dtype)
        key = (tuple(x.shape[-2:]), x.dtype, x.device, torch.is_inference_mode_enabled())
        pos = self._pos_cache.get(key)
        if pos is None:
            if len(self._pos_cache) >= 16:
                self._pos_cache.clear()
            pos = self._pos_cache[key] = self.position_encoding(x[:1])[0].to(x.dtype).contiguous()
        return pos[None].expand(x.shape[0], -1, -1, -1)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.fpn_interp_model == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x.float(), scale_factor=2.0, mode=self.fpn_interp_model, align_corners=False)

    def features(self, xs: Sequence[torch.Tensor], skip: Sequence[int] = ()) -> list[torch.Tensor | None]:
        """The levels of :meth:`forward` without their position encodings; the levels in ``skip`` are left out
        (None) where no other level reads them (computed otherwise)."""
        n = len(self.convs)
        if len(xs) != n:
            raise InputError(f"the FPN neck expects {n} feature levels, got {len(xs)}")
        out: list[torch.Tensor | None] = [None] * n
        prev = None
        for i in range(n - 1, -1, -1):  # lowest resolution first
            if i in skip and not self._feeds_next(i):
                prev = None  # the next level takes no top-down input
                continue
            lateral = self.convs[n - 1 - i](xs[i])
            if prev is not None and i in self.fpn_top_down_levels:
                prev = lateral + self._upsample(prev)
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
        return out

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        out = self.features(xs)
        return out, [self._position(level) for level in out]

    def _feeds_next(self, i: int) -> bool:
        """Whether level ``i`` is added (upsampled) into level ``i - 1``."""
        return i > 0 and (i - 1) in self.fpn_top_down_levels

    def foldable(self, i: int, conv: nn.Module) -> bool:
        """Whether ``conv(level i)`` can run as one convolution on the trunk's level ``i`` (:meth:`project`):
        the level is its lateral convolution alone (no top-down input), no other level reads it, and both that
        lateral and ``conv`` are plain 1x1 convolutions."""
        n = len(self.convs)
        if not 0 <= i < n or self._feeds_next(i) or (i < n - 1 and i in self.fpn_top_down_levels):
            return False
        lateral = self.convs[n - 1 - i]
        return len(lateral) == 1 and all(_pointwise(c) for c in (lateral[0], conv))

    def project(self, i: int, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """``conv(features(xs)[i])`` for a :meth:`foldable` level, from the trunk's level ``x`` in one 1x1
        convolution: both are linear, so their weights multiply (``Wc @ Wl``, bias ``Wc @ bl + bc``, in float32).
        SAM 2.1's decoder projections (``conv_s0`` / ``conv_s1``) then take the stride-4 and stride-8 levels from
        96 / 192 channels to 32 / 64 directly instead of through 256 channels: ~5 GFLOP (~2 %) less for
        sam2.1-hiera-tiny at 1024, and the 256-channel stride-4 map is never made. Equal up to float rounding."""
        lateral = self.convs[len(self.convs) - 1 - i][0]
        with torch.autocast(x.device.type, enabled=False):  # fold in float32 whatever autocast runs the convs in
            wl, wc = lateral.weight.float().flatten(1), conv.weight.float().flatten(1)
            weight = (wc @ wl)[:, :, None, None]
            bias = wc @ lateral.bias.float() if lateral.bias is not None else None
            if conv.bias is not None:
                bias = conv.bias.float() if bias is None else bias + conv.bias.float()
        dtype = conv.weight.dtype
        return F.conv2d(x, weight.to(dtype), None if bias is None else bias.to(dtype))


class Sam2ImageEncoder(nn.Module):
    """Trunk + neck; ``forward(x)`` returns SAM 2's dictionary:

    - ``backbone_fpn``: the neck's levels high resolution first, without the ``scalp`` lowest ones
      (SAM 2.1: strides 4, 8, 16, each 256 channels);
    - ``vision_pos_enc``: their sine position encodings;
    - ``vision_features``: the last (lowest-resolution) kept level, the image embedding.
    """

    def __init__(self, trunk: nn.Module, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk channels {list(trunk.channel_list)} do not match the neck's "
                             f"backbone_channel_list {list(neck.backbone_channel_list)}")
        if not 0 <= scalp < len(neck.backbone_channel_list):
            raise ValueError(f"scalp must be between 0 and {len(neck.backbone_channel_list) - 1}, got {scalp}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features, pos = self.neck(self.trunk(x))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


_VARIANT_ALIASES = {"t": "tiny", "s": "small", "b+": "base_plus", "base-plus": "base_plus",
                    "baseplus": "base_plus", "l": "large"}


def build_sam2_image_encoder(variant: str, depth: tuple[int, ...] | None = None) -> Sam2ImageEncoder:
    """SAM 2.1's image encoder for ``variant`` ("tiny", "small", "base_plus" or "large"), randomly initialised.

    ``depth`` replaces the trunk's blocks per stage (four positive numbers), for fast reduced-depth
    tests; the global-attention blocks then keep their distance from the end of their stage (see
    :func:`~swiftsam.modeling.encoders.hiera.reduced_global_att_blocks`; the trunk's
    ``global_att_blocks`` attribute says which it got).
    """
    key = _VARIANT_ALIASES.get(str(variant).lower(), str(variant).lower())
    if key not in HIERA_CONFIGS:
        raise InputError(f"unknown SAM 2.1 image encoder variant {variant!r}; "
                         f"choose one of {', '.join(HIERA_CONFIGS)}")
    cfg = dict(HIERA_CONFIGS[key])
    if depth is not None:
        depth = tuple(depth)
        if len(depth) != len(cfg["stages"]) or not all(isinstance(d, int) and d >= 1 for d in depth):
            raise InputError(f"depth must be {len(cfg['stages'])} positive block counts (one per stage), "
                             f"got {depth}")
        cfg["global_att_blocks"] = reduced_global_att_blocks(depth, cfg["stages"], cfg["global_att_blocks"])
        cfg["stages"] = depth
    trunk = Hiera(**cfg)
    neck = FpnNeck(d_model=256, backbone_channel_list=trunk.channel_list, fpn_top_down_levels=(2, 3),
                   fpn_interp_model="nearest",
                   position_encoding=PositionEmbeddingSine(256, temperature=10000, normalize=True, scale=None))
    return Sam2ImageEncoder(trunk, neck, scalp=1)
