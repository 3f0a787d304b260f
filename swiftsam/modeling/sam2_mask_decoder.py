"""SAM 2's mask decoder: SAM's decoder plus high-resolution skip features and an object-score head."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .common import MLP, LayerNorm2d, MLPStack
from .mask_decoder import upscale_masks
from .transformer import TwoWayTransformer


def sam2_two_way_transformer(
    depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048
) -> TwoWayTransformer:
    """The project's two-way transformer with SAM 2's key names.

    The maths are SAM's; only the feed-forward block's names differ: SAM 2 spells it as a two-layer
    ``MLP`` (``mlp.layers.0`` / ``mlp.layers.1``, ReLU between them) where SAM has ``mlp.lin1`` /
    ``mlp.lin2``. Swapping the block keeps one transformer implementation for both families.
    """
    transformer = TwoWayTransformer(depth=depth, embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim)
    for layer in transformer.layers:
        layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, 2)
    return transformer


class Sam2MaskDecoder(nn.Module):
    """From image features and prompt embeddings to masks, IoU predictions and an object score.

    Output tokens, in order: the object-score token (with ``pred_obj_scores``), the IoU token and
    ``num_mask_tokens`` = 1 + ``num_multimask_outputs`` mask tokens (token 0 the single-mask output,
    1..3 the multimask outputs). With ``use_high_res_features`` the upscaling path adds the image
    encoder's stride-8 and stride-4 features (already projected by ``conv_s1`` / ``conv_s0``; the caller
    applies those once per image). Module names equal the official SAM 2 / 2.1 checkpoint keys
    (``sam_mask_decoder.*``).

    ``predict_all`` computes every token's output without choosing (the export-friendly entry the
    prompt decoders use); ``forward`` is SAM 2's entry with its output selection.
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
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)

        self.output_hypernetworks_mlps = MLPStack(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(transformer_dim, transformer_dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(transformer_dim, 1)
            )

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    @property
    def num_output_tokens(self) -> int:
        """Object-score token (if any) + IoU token + mask tokens."""
        return int(self.pred_obj_scores) + 1 + self.num_mask_tokens

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
        return_tokens: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """All mask tokens' masks (B x 4 x 4h x 4w logits), IoU predictions (B x 4) and object-score
        logits (B x 1); token 0 is the single-mask output.

        ``image_embeddings`` (and each of ``high_res_features`` = (stride-4 features, projected by
        ``conv_s0``: C/8 x 4h x 4w; stride-8 features, projected by ``conv_s1``: C/4 x 2h x 2w)) has batch 1,
        shared by every prompt and broadcast, never repeated, or batch B, one per prompt. ``return_tokens``
        also returns the transformer's output tokens (B x ``num_output_tokens`` x C, in the order of the
        class docstring). No branch depends on the data: this traces to ONNX as is.
        """
        n_prompts = sparse_prompt_embeddings.shape[0]
        weights = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            weights.insert(0, self.obj_score_token.weight)
        s = int(self.pred_obj_scores)
        output_tokens = torch.cat(weights, dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n_prompts, -1, -1), sparse_prompt_embeddings], dim=1)

        src = image_embeddings + dense_prompt_embeddings
        h, w = src.shape[-2:]
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens]
        b = n_prompts
        skips = None
        if self.use_high_res_features:
            if high_res_features is None or len(high_res_features) != 2:
                raise InputError(
                    "this SAM 2 mask decoder uses high-resolution features: pass high_res_features="
                    "(stride-4 features after conv_s0, stride-8 features after conv_s1)"
                )
            skips = (high_res_features[0], high_res_features[1])
        hyper_in = self.output_hypernetworks_mlps(mask_tokens_out)  # B x M x C/8
        masks = upscale_masks(self.output_upscaling, src, h, w, hyper_in, skips)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:  # "object present": sigmoid(10) ~ 1, as SAM 2 does without the head
            object_score_logits = iou_pred.new_full((b, 1), 10.0)
        if return_tokens:
            return masks, iou_pred, object_score_logits, hs[:, : self.num_output_tokens]
        return masks, iou_pred, object_score_logits

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM 2's entry: (masks, iou_pred, sam_tokens_out, object_score_logits).

        ``multimask_output``: the three multimask outputs (B x 3); otherwise the single-mask output
        (B x 1), or, with ``dynamic_multimask_via_stability`` in eval mode, per prompt the best multimask
        output wherever the single mask is unstable. ``sam_tokens_out``: the mask tokens behind the object
        pointer (B x 3 x C for multimask output with ``use_multimask_token_for_obj_ptr``, else token 0,
        B x 1 x C). ``repeat_image``: one image (batch 1) for all B prompts; without it the batches must match.
        """
        n_prompts = sparse_prompt_embeddings.shape[0]
        if repeat_image:
            if image_embeddings.shape[0] != 1:
                raise InputError(
                    f"repeat_image=True needs one image embedding (batch 1), got batch {image_embeddings.shape[0]}"
                )
        elif image_embeddings.shape[0] != n_prompts:
            raise InputError(
                f"got {image_embeddings.shape[0]} image embeddings for {n_prompts} prompts: pass one per prompt, "
                "or one with repeat_image=True"
            )
        masks, iou_pred, object_score_logits, tokens = self.predict_all(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
            high_res_features, return_tokens=True,
        )
        return (*self.select_outputs(masks, iou_pred, tokens, multimask_output), object_score_logits)

    def select_outputs(self, masks: torch.Tensor, iou_pred: torch.Tensor, tokens: torch.Tensor,
                       multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``predict_all``'s outputs (all masks and IoU, the output tokens) -> ``forward``'s (masks, iou_pred,
        sam_tokens_out): the multimask outputs, or the single mask (dynamically replaced where unstable)."""
        mask_tokens_out = tokens[:, int(self.pred_obj_scores) + 1 :]
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self.dynamic_multimask(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:  # the single-mask token is the object-memory token (as trained)
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out

    def stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU between the masks thresholded at +delta and at -delta (1 where both are empty)."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inter = (flat > delta).sum(dim=-1).float()
        union = (flat > -delta).sum(dim=-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))

    def dynamic_multimask(
        self, all_mask_logits: torch.Tensor, all_iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt: the single-mask output (token 0) when its stability score reaches the threshold,
        else the multimask output (tokens 1..) with the highest predicted IoU. B x 1 masks and IoU."""
        multi_logits, multi_iou = all_mask_logits[:, 1:], all_iou[:, 1:]
        best = multi_iou.argmax(dim=-1)  # B
        best_logits = torch.gather(
            multi_logits, 1, best[:, None, None, None].expand(-1, 1, *multi_logits.shape[-2:])
        )
        best_iou = torch.gather(multi_iou, 1, best[:, None])
        single_logits, single_iou = all_mask_logits[:, 0:1], all_iou[:, 0:1]
        stable = self.stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh  # B x 1
        return (
            torch.where(stable[..., None, None], single_logits, best_logits),
            torch.where(stable, single_iou, best_iou),
        )


def build_sam2_mask_decoder(
    *,
    dynamic_multimask_via_stability: bool = True,
    dynamic_multimask_stability_delta: float = 0.05,
    dynamic_multimask_stability_thresh: float = 0.98,
) -> Sam2MaskDecoder:
    """SAM 2.1's mask decoder (the same for hiera t / s / b+ / l): 256 wide, two-way transformer of depth 2
    with 8 heads, high-resolution features, sigmoid IoU head, MLP object-score head, multimask tokens for
    the object pointer. Dynamic multimask via stability is on, as in sam2's ``build_sam2`` /
    ``build_sam2_video_predictor`` defaults (``apply_postprocessing=True``)."""
    return Sam2MaskDecoder(
        transformer_dim=256,
        transformer=sam2_two_way_transformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        dynamic_multimask_via_stability=dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=dynamic_multimask_stability_thresh,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
    )
