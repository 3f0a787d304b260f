"""EfficientViT-SAM image encoders (L0-L2 at 512 input, XL0-XL1 at 1024 input).

Module names follow the authors' checkpoints (``backbone.stages.N.op_list.M...``,
``neck.input_ops/middle/output_ops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..common import LayerNorm2d
from ..contract import FeatureInfo

GELU = partial(nn.GELU, approximate="tanh")


class ConvLayer(nn.Module):
    """conv -> optional BatchNorm -> optional activation ("same" padding)."""

    bn_pairs = (("conv", "norm"),)  # (conv, batch norm) that inference may fold

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout) if norm else None
        self.act = GELU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class OpSequential(nn.Module):
    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """``main(x) + x`` (or just ``main(x)`` for a block that changes shape)."""

    def __init__(self, main: nn.Module, identity: bool = True) -> None:
        super().__init__()
        self.main = main
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.identity else self.main(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.conv1 = ConvLayer(cin, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm)
        self.conv2 = ConvLayer(mid, cout, 3, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.spatial_conv = ConvLayer(cin, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm)
        self.point_conv = ConvLayer(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: float, fewer_norm: bool) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.inverted_conv = ConvLayer(cin, mid, 1, bias=fewer_norm, norm=not fewer_norm)
        self.depth_conv = ConvLayer(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm)
        self.point_conv = ConvLayer(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


LOCAL_BLOCKS = {"res": ResBlock, "fmb": FusedMBConv, "mb": MBConv}


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention."""

    def __init__(self, channels: int, dim: int = 32, scales: tuple[int, ...] = (5,), eps: float = 1e-15) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        heads = channels // dim
        total = heads * dim
        self.qkv = ConvLayer(channels, 3 * total, 1, norm=False, act=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvLayer(total * (1 + len(scales)), channels, 1, act=False)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        b, _, h, w = qkv.shape
        qkv = qkv.float().reshape(b, -1, 3 * self.dim, h * w)
        q = F.relu(qkv[:, :, : self.dim])
        k = F.relu(qkv[:, :, self.dim : 2 * self.dim])
        v = qkv[:, :, 2 * self.dim :]
        if h * w > self.dim:  # linear attention: (v k^T) q, with a row of ones for the normaliser
            v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
            out = (v @ k.transpose(-1, -2)) @ q
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        else:  # tiny maps: the quadratic form is cheaper
            att = k.transpose(-1, -2) @ q
            att = att / (att.sum(dim=2, keepdim=True) + self.eps)
            out = v @ att
        return out.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        return self.proj(self._attend(qkv).to(qkv.dtype))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, dim: int, expand: float, scales: tuple[int, ...]) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, dim, scales))
        self.local_module = Residual(MBConv(channels, channels, 1, expand, fewer_norm=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


@dataclass(frozen=True)
class BackboneConfig:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    blocks: tuple[str, ...] = ("res", "fmb", "fmb", "mb", "att")
    expands: tuple[float, ...] = (1, 4, 4, 4, 6)
    fewer_norm: tuple[bool, ...] = (False, False, False, True, True)
    qkv_dim: int = 32


class EfficientViTLargeBackbone(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        stem: list[nn.Module] = [ConvLayer(3, cfg.widths[0], 3, 2)]
        for _ in range(cfg.depths[0]):
            block = LOCAL_BLOCKS[cfg.blocks[0]](cfg.widths[0], cfg.widths[0], 1, cfg.expands[0], cfg.fewer_norm[0])
            stem.append(Residual(block))
        stages = [OpSequential(stem)]
        cin = cfg.widths[0]
        for i in range(1, len(cfg.widths)):
            kind, width, expand, fewer = cfg.blocks[i], cfg.widths[i], cfg.expands[i], cfg.fewer_norm[i]
            down_kind = kind if kind in ("mb", "fmb") else "mb"
            ops: list[nn.Module] = [Residual(LOCAL_BLOCKS[down_kind](cin, width, 2, expand * 4, fewer), identity=False)]
            for _ in range(cfg.depths[i]):
                if kind.startswith("att"):
                    scales = (3,) if kind == "att@3" else (5,)
                    ops.append(EfficientViTBlock(width, cfg.qkv_dim, expand, scales))
                else:
                    ops.append(Residual(LOCAL_BLOCKS[kind](width, width, 1, expand, fewer)))
            stages.append(OpSequential(ops))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[f"stage{i}"] = x
        return feats


class Upsample(nn.Module):
    """Bicubic resize to a fixed size (no-op when already there)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x.float(), size=self.size, mode="bicubic", align_corners=False)


class SamNeck(nn.Module):
    """Project three stages to 64 x 64, sum, refine with fused-MBConv blocks, project to 256."""

    def __init__(
        self,
        fids: tuple[str, ...],
        in_channels: tuple[int, ...],
        head_width: int,
        head_depth: int,
        expand: float,
        out_dim: int = 256,
        grid: int = 64,
    ) -> None:
        super().__init__()
        self.fids = fids
        self.out_dim, self.grid = out_dim, grid
        self.input_ops = nn.ModuleList(
            OpSequential([ConvLayer(c, head_width, 1, act=False), Upsample((grid, grid))]) for c in in_channels
        )
        self.middle = OpSequential(
            [Residual(FusedMBConv(head_width, head_width, 1, expand, fewer_norm=False)) for _ in range(head_depth)]
        )
        self.output_ops = nn.ModuleList([OpSequential([ConvLayer(head_width, out_dim, 1, bias=True, norm=False, act=False)])])

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = [op(feats[fid]) for fid, op in zip(self.fids, self.input_ops)]
        x = inputs[-1]
        for t in reversed(inputs[:-1]):  # same summation order as the authors' list_sum
            x = t + x
        return self.output_ops[0](self.middle(x))


class EfficientViTSamEncoder(nn.Module):
    def __init__(self, backbone: EfficientViTLargeBackbone, neck: SamNeck, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.backbone = backbone
        self.neck = neck
        self.feature_info = (FeatureInfo("image_embeddings", neck.out_dim, neck.grid),)
        self.norm = LayerNorm2d(neck.out_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.neck(self.backbone(x)))


_L = ("stage4", "stage3", "stage2"), (512, 256, 128)
_XL = ("stage5", "stage4", "stage3"), (1024, 512, 256)
_XL_BACKBONE = dict(
    widths=(32, 64, 128, 256, 512, 1024),
    blocks=("res", "fmb", "fmb", "fmb", "att@3", "att@3"),
    expands=(1, 4, 4, 4, 4, 6),
    fewer_norm=(False, False, False, False, True, True),
)

EFFICIENTVIT_SAM_CONFIGS: dict[str, tuple[BackboneConfig, tuple, int, float, int]] = {
    # name: (backbone, neck inputs, neck depth, neck expand, input size)
    "l0": (BackboneConfig((32, 64, 128, 256, 512), (1, 1, 1, 4, 4)), _L, 4, 1, 512),
    "l1": (BackboneConfig((32, 64, 128, 256, 512), (1, 1, 1, 6, 6)), _L, 8, 1, 512),
    "l2": (BackboneConfig((32, 64, 128, 256, 512), (1, 2, 2, 8, 8)), _L, 12, 1, 512),
    "xl0": (BackboneConfig(depths=(0, 1, 1, 2, 3, 3), **_XL_BACKBONE), _XL, 6, 4, 1024),
    "xl1": (BackboneConfig(depths=(1, 2, 2, 4, 6, 6), **_XL_BACKBONE), _XL, 12, 4, 1024),
}


def build_efficientvit_sam_encoder(variant: str, depth_scale: float = 1.0) -> EfficientViTSamEncoder:
    """Build an EfficientViT-SAM encoder; ``depth_scale`` < 1 shrinks block counts (tests only)."""
    cfg, (fids, chans), neck_depth, neck_expand, img_size = EFFICIENTVIT_SAM_CONFIGS[variant]
    if depth_scale != 1.0:
        cfg = BackboneConfig(
            cfg.widths, tuple(max(1, round(d * depth_scale)) if d else 0 for d in cfg.depths),
            cfg.blocks, cfg.expands, cfg.fewer_norm, cfg.qkv_dim,
        )
        neck_depth = max(1, round(neck_depth * depth_scale))
    neck = SamNeck(fids, chans, 256, neck_depth, neck_expand)
    return EfficientViTSamEncoder(EfficientViTLargeBackbone(cfg), neck, img_size)
