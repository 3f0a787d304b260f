"""Prompt encoder: points, boxes and low-resolution masks to decoder tokens."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d, inference_cache_key


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) through a fixed random Gaussian projection."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))
        self._cache: dict[tuple, torch.Tensor] = {}  # key -> C x H x W encoding (see ``forward``)

    def _encode(self, coords01: torch.Tensor) -> torch.Tensor:
        projected = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Encoding of every cell centre of an ``h x w`` grid, shaped C x H x W (channels-last memory), computed in
        float32 and given in ``dtype`` (a decoder running in 16 bits). It depends on the size and the projection
        only, so outside autograd, tracing and compiling it is kept (``common.inference_cache_key``; the last
        size, in each dtype asked for): the decoder asks for it on every call."""
        key = inference_cache_key(self.positional_encoding_gaussian_matrix)
        if key is None:
            return self._grid(size).to(dtype)
        key = (tuple(size), dtype, *key)
        kept = self._cache  # read once, replaced whole (threads)
        if key not in kept:
            kept = {k: v for k, v in kept.items() if k[0] == key[0] and k[2:] == key[2:]}
            kept[key] = self._grid(size).to(dtype)
            self._cache = kept
        return kept[key]

    def _grid(self, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode B x N x 2 pixel coordinates in an image of ``image_size`` (H, W)."""
        c = coords.to(torch.float32)  # scaled by Python numbers: no host tensor copied to the device per call
        # (a CUDA graph capture forbids that copy); the same float32 products as a tensor of 1/W, 1/H
        return self._encode(torch.stack((c[..., 0] * (1.0 / image_size[1]), c[..., 1] * (1.0 / image_size[0])), -1))


class PromptEncoder(nn.Module):
    """Embeds sparse prompts (points, box corners) and dense prompts (mask logits)."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Positional encoding of the image embedding grid, 1 x C x H x W, in ``dtype``."""
        return self.pe_layer(self.image_embedding_size, dtype).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # centre of the pixel
        if pad:
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros((b, 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((b, 1))], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight.expand_as(emb), emb)
        emb = emb + (labels == 0) * self.point_embeddings[0].weight
        emb = emb + (labels == 1) * self.point_embeddings[1].weight
        return emb

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_kind = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return emb + corner_kind

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return sparse (B x N x C) and dense (B x C x h x w) prompt embeddings."""
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty((bs, 0, self.embed_dim), device=device)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return torch.cat(sparse, dim=1), dense
