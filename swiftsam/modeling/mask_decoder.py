"""Mask decoder: output tokens + two-way transformer + hypernetwork mask heads."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    """SAM's mask decoder: from an image embedding and prompt embeddings to masks and their predicted IoU.

    It owns the output tokens (one IoU token and ``num_mask_tokens`` = 1 + ``num_multimask_outputs`` mask
    tokens: token 0 the single-mask output, 1..3 the multimask outputs), the two-way transformer between
    tokens and image, the upscaling of the image side to 4x the embedding's resolution, one hypernetwork
    MLP per mask token and the IoU head. It computes every token's output (``predict_all``); which to keep
    is the caller's output policy (``prompt_decoder.choose_outputs``), not its concern. Module names equal
    the authors' checkpoint keys.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B x M x 4h x 4w logits) and IoU predictions (B x M); M = 3 or 1."""
        masks, iou_pred = self.predict_all(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou_pred[:, keep]

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        return_tokens: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """All ``num_mask_tokens`` masks and IoU predictions (token 0 is the single-mask output).

        ``image_embeddings`` is either one embedding (1 x C x h x w), shared by every prompt,
        or one per prompt (B x C x h x w). ``return_tokens`` also returns the transformer's output
        tokens (B x (1 + num_mask_tokens) x C: the IoU token, then the mask tokens), which
        full-stage distillation matches between teacher and student.
        """
        n_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n_prompts, -1, -1), sparse_prompt_embeddings], dim=1)

        # broadcast, never repeat: with one shared embedding and one dense embedding (no mask
        # prompt), ``src`` stays a single image and the transformer's first image-side projections run
        # once for all prompts; the first image-to-token attention gives each prompt its own copy
        src = image_embeddings + dense_prompt_embeddings
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        b = n_prompts
        src = src.expand(b, -1, -1)  # a no-op unless the transformer left the image side shared

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        if return_tokens:
            return masks, self.iou_prediction_head(iou_token_out), hs[:, : 1 + self.num_mask_tokens]
        return masks, self.iou_prediction_head(iou_token_out)
