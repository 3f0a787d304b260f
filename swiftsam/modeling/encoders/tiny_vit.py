"""TinyViT-5M image encoder as used by MobileSAM and TinySAM (1024 input, 256 x 64 x 64 output).

Module names follow the authors' checkpoints. Their classifier (``norm_head``, ``head``) is not
part of this encoder; the zoo drops those keys when loading.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

from ..common import LayerNorm2d
from ..contract import FeatureInfo


class Conv2d_BN(nn.Sequential):  # noqa: N801  (name fixed by the checkpoints' keys: c.*, bn.*)
    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs: 1/4 resolution."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(3, embed_dim // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual; the activation comes after the residual sum."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 (stride 2, or 1 into the last stage), 1x1 conv; returns tokens."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if x.ndim == 3:
            x = x.view(x.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Window attention with a learned bias per head and per (|dy|, |dx|) offset."""

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.dh = key_dim * num_heads  # attn_ratio is 1 in every TinyViT block
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh * 3)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        n = len(points)
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(n, n), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.key_dim], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, self.dh)
        return self.proj(out)


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, n, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (-h) % ws, (-w) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            y = y[:, :h, :w].reshape(b, n, c)
        x = x + y
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then a patch merge."""

    def __init__(self, dim: int, depth: int, out_dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride=2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x, hw), (hw[0] // 2, hw[1] // 2)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then (except in the last stage) a patch merge."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, out_dim: int | None, merge_stride: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window_size) for _ in range(depth))
        self.merge_stride = merge_stride
        self.downsample = PatchMerging(dim, out_dim, merge_stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw
        s = self.merge_stride
        return self.downsample(x, hw), ((hw[0] + s - 1) // s, (hw[1] + s - 1) // s)


class TinyViT(nn.Module):
    """TinyViT trunk + SAM neck. Strides 4, 8, 16, 16: a 1024 input gives a 64 x 64 embedding."""

    def __init__(
        self,
        img_size: int = 1024,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.feature_info = (FeatureInfo("image_embeddings", out_chans, img_size // 16),)  # stride 16
        self.patch_embed = PatchEmbed(embed_dims[0])
        last = len(depths) - 1
        layers: list[nn.Module] = [ConvLayer(embed_dims[0], depths[0], embed_dims[1])]
        for i in range(1, len(depths)):
            out_dim = embed_dims[i + 1] if i < last else None
            # the merge into the last stage keeps the resolution (stride 16 overall)
            layers.append(BasicLayer(embed_dims[i], depths[i], num_heads[i], window_sizes[i], out_dim,
                                     merge_stride=1 if i == last - 1 else 2))
        self.layers = nn.ModuleList(layers)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        for layer in self.layers:
            x, hw = layer(x, hw)
        b, _, c = x.shape
        return self.neck(x.view(b, hw[0], hw[1], c).permute(0, 3, 1, 2))
