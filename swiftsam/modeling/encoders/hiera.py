"""Hiera: the hierarchical vision transformer trunk of SAM 2 / SAM 2.1's image encoder.

A 7x7 stride-4 patch embedding, then ``sum(stages)`` transformer blocks in four stages. The first block of
stages 2..4 halves the resolution by max-pooling its queries (and its residual) and widens the channels
(``dim_mul``) and heads (``head_mul``). Blocks attend inside non-overlapping windows (``window_spec`` per
stage, zero-padded at the border) except the ``global_att_blocks``, which attend over the whole map. The
position embedding is a learned background map bicubically resized to the stride-4 grid plus a learned
window-sized embedding tiled over it.

Module and parameter names follow the official SAM 2.1 checkpoints (``image_encoder.trunk.*``), so their
weights load unchanged. The feature sizes follow the input size (any multiple of 32), nothing is
hard-coded for 1024 px, and there is no data-dependent control flow, so the trunk traces to ONNX at a
fixed size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InputError
from ..common import inference_cache_key, is_plain

# Trunk arguments of the four SAM 2.1 image models (configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml; the
# base_plus config spells only embed_dim and num_heads and takes Hiera's defaults for the rest).
HIERA_CONFIGS: dict[str, dict] = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                 window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_pos_embed_bkg_spatial_size=(14, 14), window_spec=(8, 4, 14, 7)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}


def reduced_global_att_blocks(stages: Sequence[int], full_stages: Sequence[int],
                              full_global: Sequence[int]) -> tuple[int, ...]:
    """Global-attention block indices for a reduced-depth copy of a Hiera configuration.

    Every official SAM 2.1 global block lies in stage 3 and the last block of stage 3 is always one of
    them. Each keeps its distance from the end of its stage; those that then fall before the stage's
    second block are dropped (a stage's first block pools its queries and must stay windowed).
    """
    full_ends = [sum(full_stages[: i + 1]) - 1 for i in range(len(full_stages))]
    ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
    out = []
    for g in full_global:
        stage = next(i for i, e in enumerate(full_ends) if g <= e)
        if stage >= len(stages):
            continue
        new = ends[stage] - (full_ends[stage] - g)
        first = ends[stage] - stages[stage] + 1
        if new > first or (stage == 0 and new >= first):
            out.append(new)
    return tuple(sorted(set(out)))


class PatchEmbed(nn.Module):
    """Strided convolution from the image to the B x H x W x C token grid (channels last)."""

    def __init__(self, kernel_size=(7, 7), stride=(4, 4), padding=(3, 3), in_chans: int = 3,
                 embed_dim: int = 96) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class DropPath(nn.Module):
    """Stochastic depth: during training, zero a sample's residual branch with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Two linear layers with GELU between them; parameters ``layers.0`` / ``layers.1`` as in SAM 2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


def _pad_to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad B x H x W x C at the bottom/right to whole windows."""
    h, w = x.shape[1], x.shape[2]
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """B x Hp x Wp x C (Hp, Wp multiples of ``window``) -> (B * windows) x window x window x C."""
    b, hp, wp, c = x.shape
    x = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c)


def from_windows(x: torch.Tensor, window: int, hp: int, wp: int) -> torch.Tensor:
    """(B * windows) x window x window x C -> B x Hp x Wp x C (inverse of :func:`to_windows`)."""
    nh, nw = hp // window, wp // window
    c = x.shape[-1]
    x = x.reshape(-1, nh, nw, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, c)


def max_pool_channels_last(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Max-pool a B x H x W x C grid with kernel = stride (no padding, floor mode). Pooling the NCHW view keeps
    the channels-last memory layout, so neither side needs a copy."""
    x = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return x.permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a B x H x W x C grid; with ``q_stride`` the queries are max-pooled, so
    the output has the pooled size (and ``dim_out`` channels)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out {dim_out} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_stride = tuple(q_stride) if q_stride else None
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        heads = self.num_heads
        head_dim = self.dim_out // heads
        q, k, v = self._qkv(x)  # each B x H x W x dim_out (heads x head_dim)
        if self.q_stride is not None:  # max-pool the queries on their grid (all heads at once, channels last)
            q = max_pool_channels_last(q, self.q_stride)
        hq, wq = q.shape[1], q.shape[2]
        # SDPA wants B x heads x L x d
        q = q.reshape(b, hq * wq, heads, head_dim).transpose(1, 2)
        k = k.reshape(b, h * w, heads, head_dim).transpose(1, 2)
        v = v.reshape(b, h * w, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # B x heads x hq*wq x d
        out = out.transpose(1, 2).reshape(b, hq, wq, self.dim_out)
        return self.proj(out)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k and v: the ``qkv`` projection's three output blocks. A plain ``nn.Linear`` runs as three products
        with its weight's row blocks (views, no copies): the same dot products, but exported graphs then hold three
        MatMuls and no strided Split of the fused output, which OpenVINO runs with a slow reference kernel (~4 % of
        sam2.1-hiera-tiny's encoder on CPU, benchmarks/sam2.md). Any other module there (dynamic quantization,
        fake-quant layers) is called as it is and its output split."""
        qkv, d = self.qkv, self.dim_out
        if not is_plain(qkv):
            return qkv(x).chunk(3, dim=-1)
        w, bias = qkv.weight, qkv.bias
        return tuple(F.linear(x, w[i * d:(i + 1) * d], None if bias is None else bias[i * d:(i + 1) * d])
                     for i in range(3))


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block on a B x H x W x C grid: (windowed or global) attention, then an MLP.

    A block with ``q_stride`` (the first of a stage) pools its queries and its residual; a block that widens
    the channels projects its residual with ``proj`` (from the normalised input, as in SAM 2).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 q_stride: tuple[int, int] | None = None, window_size: int = 0) -> None:
        super().__init__()
        if q_stride and window_size and window_size % q_stride[0]:
            raise ValueError(f"window size {window_size} is not divisible by the query stride {q_stride[0]}")
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = tuple(q_stride) if q_stride else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride=self.q_stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.q_stride is None else max_pool_channels_last(x, self.q_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
        shortcut = self._pool(shortcut)
        h, w = shortcut.shape[1], shortcut.shape[2]  # output grid (pooled for a stage's first block)

        window = self.window_size
        if window > 0:
            x = _pad_to_windows(x, window)
            hp, wp = x.shape[1], x.shape[2]
            x = self.attn(to_windows(x, window))
            if self.q_stride is not None:
                window, hp, wp = window // self.q_stride[0], hp // self.q_stride[0], wp // self.q_stride[1]
            x = from_windows(x, window, hp, wp)
            if hp > h or wp > w:
                x = x[:, :h, :w, :]
        else:
            x = self.attn(x)

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """The Hiera trunk. ``forward(x)`` (B x 3 x S x S', S and S' multiples of 32) returns the output of every
    stage as B x C x H x W, highest resolution first (strides 4, 8, 16, 32; ``return_interm_layers=False``:
    only the last). ``channel_list`` gives their channel counts lowest resolution first, as the neck wants.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] | None = (12, 16, 20),
        return_interm_layers: bool = True,
    ) -> None:
        super().__init__()
        stages = tuple(int(s) for s in stages)
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {tuple(window_spec)} must have the same length")
        if not stages or min(stages) < 1:
            raise ValueError(f"every stage needs at least one block, got stages={stages}")
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"q_pool must be between 0 and {len(stages) - 1} (stage changes), got {q_pool}")
        depth = sum(stages)
        self.stages = stages
        self.window_spec = tuple(int(w) for w in window_spec)
        self.q_stride = tuple(q_stride)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        self.q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][:q_pool]
        self.global_att_blocks = tuple(global_att_blocks) if global_att_blocks is not None else ()
        bad = sorted(set(self.global_att_blocks) & set(self.q_pool_blocks))
        if bad:
            raise ValueError(f"global attention blocks {bad} are query-pooling blocks (a stage's first block), "
                             "which must stay windowed; choose other global_att_blocks")
        self.return_interm_layers = return_interm_layers
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0]))

        # stochastic depth grows linearly with depth (plain Python: works under a meta-device context)
        drop_rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList()
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(depth):
            # A stage's first block still uses the previous stage's window (on its un-pooled input).
            window = self.window_spec[stage]
            if i in self.global_att_blocks:
                window = 0
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                heads = int(heads * head_mul)
                stage += 1
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, heads, drop_path=drop_rates[i],
                q_stride=self.q_stride if i in self.q_pool_blocks else None, window_size=window))
            dim = dim_out

        ends = self.stage_ends if return_interm_layers else self.stage_ends[-1:]
        self.channel_list = [self.blocks[i].dim_out for i in ends[::-1]]
        self._out_blocks = set(ends)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @property
    def stride(self) -> int:
        """The input-size multiple the trunk needs (patch stride times every query pooling)."""
        s = self.patch_embed.proj.stride[0]
        for _ in self.q_pool_blocks:
            s *= self.q_stride[0]
        return s

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """1 x h x w x C: the background embedding resized to h x w plus the window embedding tiled over it."""
        win = self.pos_embed_window.shape[-1]
        if h % win or w % win:
            raise InputError(f"the stride-4 feature grid {h}x{w} is not a whole number of {win}x{win} windows; "
                             f"use an input size that is a multiple of {4 * win}")
        bkg = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        c = bkg.shape[1]
        tiled = self.pos_embed_window.reshape(1, c, 1, win, 1, win).expand(1, c, h // win, win, w // win, win)
        return (bkg + tiled.reshape(1, c, h, w)).permute(0, 2, 3, 1)

    def _cached_position_embedding(self, h: int, w: int) -> torch.Tensor:
        """``position_embedding(h, w)``. Without autograd (and outside tracing and compiling) it is kept for the
        size and the current values of the two embedding parameters (their version counters, storage and
        dtype: a load_state_dict, an optimiser step or a move recomputes it)."""
        key = inference_cache_key(self.pos_embed, self.pos_embed_window)
        if key is None:
            return self.position_embedding(h, w)
        key = (h, w, *key)
        pos = self._pos_cache.get(key)
        if pos is None:
            self._pos_cache.clear()  # older sizes / weights: one entry is what an image path needs
            pos = self._pos_cache[key] = self.position_embedding(h, w)
        return pos

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise InputError(f"Hiera expects a B x {self.patch_embed.proj.in_channels} x H x W image tensor, "
                             f"got shape {tuple(x.shape)}")
        stride = self.stride
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise InputError(f"Hiera needs an input size that is a multiple of {stride}, got "
                             f"{x.shape[-2]}x{x.shape[-1]}; resize or pad the image (e.g. to 1024x1024)")
        x = self.patch_embed(x)
        x = x + self._cached_position_embedding(x.shape[1], x.shape[2])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._out_blocks:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
