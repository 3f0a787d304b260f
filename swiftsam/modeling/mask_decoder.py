"""Mask decoder: output tokens + two-way transformer + hypernetwork mask heads."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import MLP, LayerNorm2d, MLPStack, is_plain


def _deconv2x2(tokens: torch.Tensor, deconv: nn.ConvTranspose2d) -> torch.Tensor:
    """A 2x2, stride-2 transposed convolution on channels-last tokens, as one matrix product: B x N x Cin ->
    B x 4N x Cout, each input token followed by its four output pixels in the order (dy, dx). Exactly the
    convolution (every output pixel sees one input pixel), without its slow kernel or layout changes."""
    cin, cout = deconv.in_channels, deconv.out_channels
    weight = deconv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)  # rows (dy, dx, out)
    out = F.linear(tokens, weight, deconv.bias.expand(4, cout).reshape(-1))  # bias inside the product (no Tile)
    return out.reshape(out.shape[0], -1, cout)


def _token_order(feature: torch.Tensor, h: int, w: int, levels: int) -> torch.Tensor:
    """A B x C x (h 2^L) x (w 2^L) map in the deconvolutions' pixel order (each coarse pixel of the h x w grid,
    then its 2x2 children, ``levels`` times): B x (hw 4^L) x C."""
    b, c = feature.shape[:2]
    if levels == 1:
        return feature.reshape(b, c, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, c)
    return feature.reshape(b, c, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1).reshape(b, -1, c)


def upscale_masks(upscaling: nn.Sequential, src: torch.Tensor, h: int, w: int, hyper_in: torch.Tensor,
                  skips: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """SAM's ``output_upscaling`` (deconv, LayerNorm2d, act, deconv, act) of the image tokens ``src`` (B x hw x C,
    row-major over the h x w grid) and the hypernetwork product with ``hyper_in`` (B x M x C/8): B x M x 4h x 4w.
    ``skips``: SAM 2's high-resolution features (stride 4, stride 8), added after the second and the first
    deconvolution.

    Same arithmetic as running the modules on an NCHW map, in a cheaper order: the pixels stay in the order the
    deconvolutions produce them (each coarse pixel, then its 2x2 children, then theirs), the channel reductions
    happen there, and only the M output masks are put in raster order at the end. The masks come back in
    float32 whatever the working precision.
    """
    deconv1, norm, act1, deconv2, act2 = upscaling
    b = hyper_in.shape[0]
    if not (is_plain(deconv1, deconv2) and type(norm) is LayerNorm2d):
        # quantized twins (fake-quant layers) keep their own forward: run the modules on the NCHW map
        x = src.transpose(1, 2).reshape(src.shape[0], -1, h, w)
        if skips is None:
            x = upscaling(x)
        else:
            x = act2(deconv2(act1(norm(deconv1(x) + skips[1]))) + skips[0])
        x = x.expand(b, -1, -1, -1)
        return (hyper_in @ x.flatten(2)).reshape(b, -1, x.shape[-2], x.shape[-1])
    x = _deconv2x2(src, deconv1)
    if skips is not None:
        x = x + _token_order(skips[1], h, w, 1)
    x = act1(F.layer_norm(x, (norm.weight.shape[0],), norm.weight, norm.bias, norm.eps))
    x = _deconv2x2(x, deconv2)  # B x 16hw x C/8, ordered (y, x, dy1, dx1, dy2, dx2)
    if skips is not None:
        x = x + _token_order(skips[0], h, w, 2)
    x = act2(x)
    # B x 16hw x M; the reorder into raster order is a float32 copy (a 16-bit one is ~1.5x slower on a CPU), in
    # two steps of few dimensions each (one 8-D permutation is ~5x slower): first the 2h x 2w grid of the first
    # deconvolution, then the masks in raster order
    masks = (x @ hyper_in.transpose(1, 2)).expand(b, -1, -1).float()
    m = masks.shape[-1]
    masks = masks.reshape(b, h, w, 2, 2, 4 * m).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, 2, 2, m)
    return masks.permute(0, 5, 1, 3, 2, 4).reshape(b, m, 4 * h, 4 * w)


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
        self.output_hypernetworks_mlps = MLPStack(
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
        h, w = src.shape[-2:]

        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper_in = self.output_hypernetworks_mlps(mask_tokens_out)  # B x M x C/8
        masks = upscale_masks(self.output_upscaling, src, h, w, hyper_in)
        if return_tokens:
            return masks, self.iou_prediction_head(iou_token_out), hs[:, : 1 + self.num_mask_tokens]
        return masks, self.iou_prediction_head(iou_token_out)
