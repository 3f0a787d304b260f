"""The decoder every engine runs: SAM's flat prompt format in, all mask tokens out.

Prompts are one list of labelled points per prompt, as in SAM's published ONNX interface:
label 1 = foreground click, 0 = background click, 2 / 3 = a box's top-left / bottom-right
corner, -1 = padding ("not a point"). Written for export: no branch depends on the data, no
OneHot, no Tile, so the same module runs eagerly, in ONNX Runtime and in TensorRT.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import InputError
from .common import PLAIN_LAYERS, cast_floats, is_plain
from .segmenter import Segmenter

PAD_LABEL = -1
BOX_LABELS = (2, 3)
# SAM's flat prompt ABI is spelled once, in modeling.stages (the decode stage's inputs and outputs).

# what a caller asks of the four output tokens (see ``candidate_tokens``)
OUTPUT_REQUESTS = ("multimask", "single", "all")


class PromptDecoder(nn.Module):
    """(image embeddings, flat prompts, mask prompt[, high-res levels]) -> low-res logits B x 4 x 256 x 256,
    IoU B x 4[, object-score logits B x 1]: the ``decode`` stage (``modeling.stages``) of SAM 1 and SAM 2 models.

    Output token 0 is the single-mask output, 1..3 the multimask outputs.

    ``dtype`` (float32, bfloat16 or float16) is what the mask decoder (two-way transformer, upscaling, heads) runs
    in; for another than float32 it runs a copy of the model's mask decoder cast once to it (a snapshot: build a
    new PromptDecoder after changing the weights), fed the image side and the prompt embeddings cast on entry, and
    its outputs come back as float32. The prompt encoder always runs in float32: the sine encodings of pixel
    coordinates lose whole pixels in 16 bits.
    """

    def __init__(self, model: Segmenter, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.dtype = dtype
        if dtype == torch.float32:
            self.mask_decoder = model.mask_decoder
        else:
            if dtype not in (torch.bfloat16, torch.float16):
                raise InputError(f"the mask decoder runs in float32, bfloat16 or float16, not {dtype}.")
            twins = sorted({type(m).__name__ for m in model.mask_decoder.modules()
                            if isinstance(m, PLAIN_LAYERS) and not is_plain(m)})
            if twins:
                raise InputError(f"this mask decoder is quantized ({', '.join(twins)}): it runs in float32 only.")
            self.mask_decoder = copy.deepcopy(model.mask_decoder).to(dtype)
        self.object_score = model.contract.object_score

    def embed_flat_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(point_coords + 0.5, pe.input_image_size)
        labels = point_labels[..., None]
        emb = torch.where(labels == PAD_LABEL, pe.not_a_point_embed.weight, emb)
        for i, kind in enumerate(pe.point_embeddings):  # 0 bg, 1 fg, 2 top-left, 3 bottom-right
            emb = emb + (labels == i) * kind.weight
        return emb

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor,
                   mask_prompts: bool | None = None) -> torch.Tensor:
        """``mask_prompts``: whether any prompt has a mask input, when the caller knows (a captured CUDA graph
        may not read it from the device); None: read from ``has_mask_input``."""
        pe = self.prompt_encoder
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if mask_prompts is None and not exporting:
            mask_prompts = bool(has_mask_input.any())
        if mask_prompts is False:
            # eager shortcut (exported graphs stay branch-free): no mask prompt anywhere, so skip the
            # downscaling convs on B all-zero masks; the result is the same broadcast embedding
            return pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        return has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        *high_res: torch.Tensor,
        return_tokens: bool = False,
        mask_prompts: bool | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """image_embeddings 1 (or B) x C x h x w; point_coords B x N x 2 in the prompt frame; point_labels B x N;
        mask_input B x 1 x 4h x 4w; has_mask_input B (1.0 or 0.0); ``high_res``: SAM 2's higher-resolution
        levels (1 or B each), in the contract's order. Returns low-res logits B x 4 x 4h x 4w and IoU B x 4, then
        for SAM 2 the object-score logits B x 1; ``return_tokens``: also the decoder's output tokens (for
        distillation); ``mask_prompts``: see ``embed_mask``."""
        sparse = self.embed_flat_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input, mask_prompts)
        pe = self.prompt_encoder.get_dense_pe(self.dtype)  # kept between calls, in the decoder's dtype
        if self.dtype != torch.float32:
            image_embeddings, sparse, dense, *high_res = cast_floats(
                (image_embeddings, sparse, dense, *high_res), self.dtype)
        if self.object_score or high_res:  # SAM 2's decoder (modeling.sam2_mask_decoder)
            out = self.mask_decoder.predict_all(image_embeddings, pe, sparse, dense,
                                                high_res_features=tuple(high_res) or None,
                                                return_tokens=return_tokens)
        else:
            out = self.mask_decoder.predict_all(image_embeddings, pe, sparse, dense, return_tokens=return_tokens)
        return out if self.dtype == torch.float32 else cast_floats(out, torch.float32)


def flatten_prompts(
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    batch: int,
    device: torch.device,
    box_as_points: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (B x N x 2, B x N) and boxes (B x 4), prompt frame -> SAM's flat format.

    As SAM's prompt encoder: points come first, then the two box corners; a prompt with points but no box
    gets one padding point. With ``box_as_points`` (SAM 2, whose predictor passes the box to its prompt
    encoder as two labelled points): the box corners come first, then the points, then one padding point.
    """
    coords = [torch.zeros((batch, 0, 2), device=device)]
    labels = [torch.zeros((batch, 0), device=device)]
    box = None
    if boxes is not None:
        box = (boxes.to(device, torch.float32).reshape(batch, 2, 2),
               torch.tensor([BOX_LABELS], dtype=torch.float32, device=device).expand(batch, 2))
    if box is not None and box_as_points:
        coords.append(box[0])
        labels.append(box[1])
    if point_coords is not None:
        coords.append(point_coords.to(device, torch.float32))
        labels.append(point_labels.to(device, torch.float32))
    if box is not None and not box_as_points:
        coords.append(box[0])
        labels.append(box[1])
    elif point_coords is not None or box is not None:
        coords.append(torch.zeros((batch, 1, 2), device=device))
        labels.append(torch.full((batch, 1), float(PAD_LABEL), device=device))
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)


# ----------------------------------------------------------------------------- output policy
def candidate_tokens(request: str, multimask_only: bool) -> slice:
    """Which of the decoder's output tokens a request keeps (token 0 is the single-mask output, 1..3 the
    multimask outputs): "multimask" 1..3; "all" 0..3; "single" token 0, or 1..3 for a model whose single-mask
    token was never trained (``multimask_only``, TinySAM), whose best of 1..3 stands in for it."""
    if request not in OUTPUT_REQUESTS:
        raise InputError(f"the output request must be 'multimask', 'single' or 'all', got {request!r}.")
    if request == "all":
        return slice(0, None)
    if request == "multimask" or multimask_only:
        return slice(1, None)
    return slice(0, 1)


def best_tokens(iou: torch.Tensor, request: str, *, multimask_only: bool) -> torch.Tensor:
    """Per prompt (B x 4 IoU predictions) the index of the token a request rates best among its candidates."""
    keep = candidate_tokens(request, multimask_only)
    return iou[:, keep].argmax(dim=1) + keep.start


def take_tokens(low: torch.Tensor, iou: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One output per prompt: low B x 1 x h x w and iou B x 1 at ``tokens`` (B,) (gather: export-friendly)."""
    index = tokens[:, None]
    return low.gather(1, index[..., None, None].expand(-1, -1, *low.shape[-2:])), iou.gather(1, index)


def choose_outputs(low: torch.Tensor, iou: torch.Tensor, request: str, *, multimask_only: bool,
                   best: bool = False, dynamic_multimask: tuple[float, float] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The output policy: of the decoder's outputs (low-res logits B x 4 x h x w, IoU B x 4), those a request
    keeps (``candidate_tokens``): all of them (B x C), or with ``best`` (always for "single") the one with the
    highest predicted IoU (B x 1). The Predictor, MaskGenerator, evaluation and benchmarks all choose here.

    ``dynamic_multimask`` = (delta, thresh) is SAM 2's single-mask rule (``ModelContract.output_policy``): a
    "single" request keeps token 0 where its logits are stable (area above +delta over area above -delta,
    1 when both are empty, >= thresh) and the best of tokens 1..3 elsewhere."""
    if request == "single" and dynamic_multimask is not None and not multimask_only:
        delta, thresh = dynamic_multimask
        flat = low[:, 0].flatten(1)
        inter, union = (flat > delta).sum(-1).float(), (flat > -delta).sum(-1).float()
        stable = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)) >= thresh
        pick = torch.where(stable, torch.zeros_like(stable, dtype=torch.long),
                           best_tokens(iou, "multimask", multimask_only=False))
        return take_tokens(low, iou, pick)
    keep = candidate_tokens(request, multimask_only)
    if not best and request != "single" or keep == slice(0, 1):
        return low[:, keep], iou[:, keep]
    return take_tokens(low, iou, best_tokens(iou, request, multimask_only=multimask_only))
