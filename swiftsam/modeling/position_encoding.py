"""Sine-cosine position encodings for feature maps (the SAM 2 image-encoder neck and memory encoder)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding of an ``H x W`` grid (DETR style), as used by SAM 2.

    ``forward(x)`` looks only at the shape of ``x`` (B x C x H x W) and returns a float32
    B x ``num_pos_feats`` x H x W tensor: the first half of the channels encodes the row, the second half
    the column; within each half, channel pairs ``(2k, 2k+1)`` are ``sin``/``cos`` of the same frequency
    ``temperature ** (-2k / (num_pos_feats / 2))``. With ``normalize`` the positions ``1..H`` and ``1..W`` are
    divided by their last value and multiplied by ``scale`` (default ``2 pi``), so the encoding spans the
    same range at every feature size. No parameters or buffers: nothing appears in the state dict.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True; pass normalize=True or scale=None")
        self.num_pos_feats = num_pos_feats // 2  # per axis
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        k = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.num_pos_feats)

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        """n x num_pos_feats: interleaved sin/cos of positions 1..n along one axis."""
        pos = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        if self.normalize:
            pos = pos / (pos[-1:] + 1e-6) * self.scale
        angles = pos[:, None] / self._frequencies(device)
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    def grid(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """The num_pos_feats x h x w encoding (float32)."""
        device = torch.device("cpu") if device is None else device
        rows = self._axis(h, device)  # h x F
        cols = self._axis(w, device)  # w x F
        return torch.cat(
            (rows[:, None, :].expand(-1, w, -1), cols[None, :, :].expand(h, -1, -1)), dim=2
        ).permute(2, 0, 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        # A fresh tensor per call (cheap: two 1-D encodings and one concatenation); the batch axis is a
        # broadcast view of it.
        return self.grid(h, w, x.device)[None].expand(b, -1, -1, -1)
