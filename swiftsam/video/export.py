"""SAM 2's memory path as fixed-shape ONNX graphs: the memory attention (memory slots padded, a validity mask as an
input: the layout of :class:`~swiftsam.video.streaming.StreamingSession`) and the memory encoder.

``export_memory_stages(model, folder, objects=..., cond_slots=...)`` writes ``memory_attention.onnx`` and
``memory_encoder.onnx`` for a batch of ``objects`` with the streaming session's memory capacity (``cond_slots``
prompted frames + ``num_maskmem - 1`` recent frames of ``h x w`` tokens each, then the object-pointer tokens).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..utils import atomic_path


class MemoryAttentionStage(nn.Module):
    """vision / vision_pos (1 x C x h x w), memory / memory_pos (B x M x mem_dim), memory_mask (B x M bool, True for
    valid tokens; the last ``num_ptr_tokens`` are object pointers) -> conditioned features (B x C x h x w)."""

    def __init__(self, model, num_ptr_tokens: int) -> None:
        super().__init__()
        self.memory_attention = model.memory_attention
        self.num_ptr_tokens = num_ptr_tokens

    def forward(self, vision, vision_pos, memory, memory_pos, memory_mask):
        _, c, h, w = vision.shape
        b = memory.shape[0]
        curr = vision.flatten(2).permute(2, 0, 1).expand(-1, b, -1)
        pos = vision_pos.flatten(2).permute(2, 0, 1).expand(-1, b, -1)
        out = self.memory_attention(curr=[curr], curr_pos=[pos], memory=memory.transpose(0, 1),
                                    memory_pos=memory_pos.transpose(0, 1), num_obj_ptr_tokens=self.num_ptr_tokens,
                                    feat_size=(h, w), memory_mask=memory_mask)
        return out.permute(1, 2, 0).reshape(b, c, h, w)


class MemoryEncoderStage(nn.Module):
    """vision (1 x C x h x w), mask logits (B x 1 x S x S), object-score logits (B x 1), binarize (B x 1 bool: the
    mask came from clicks, as sam2's ``binarize_mask_from_pts_for_mem_enc``) -> memory (B x mem_dim x h x w, float32;
    the predictors store it as bfloat16) and its position encoding (1 x mem_dim x h x w)."""

    def __init__(self, model, scale: float = 20.0, bias: float = -10.0) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.no_obj_embed_spatial = model.no_obj_embed_spatial
        self.scale, self.bias = scale, bias

    def forward(self, vision, masks, object_score_logits, binarize):
        soft = torch.sigmoid(masks)
        hard = (masks > 0).to(masks.dtype)
        m = torch.where(binarize[:, :, None, None], hard, soft) * self.scale + self.bias
        b = masks.shape[0]
        feats, pos = self.memory_encoder.encode(vision.expand(b, -1, -1, -1), m, skip_mask_sigmoid=True)
        absent = 1 - (object_score_logits > 0).to(feats.dtype)
        feats = feats + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return feats, pos[:1]


def memory_layout(model, cond_slots: int = 4, max_obj_ptrs: int = 16) -> tuple[int, int, int]:
    """(memory tokens M, pointer tokens, feature side h) of the streaming session's fixed-capacity memory."""
    s = model.contract.image.input_size
    h = s // 16
    num_maskmem = int(model.maskmem_tpos_enc.shape[0])
    mem_dim = int(model.maskmem_tpos_enc.shape[-1])
    split = int(model.no_mem_embed.shape[-1]) // mem_dim
    n_ptr = (cond_slots + max_obj_ptrs - 1) * split
    return (cond_slots + num_maskmem - 1) * h * h + n_ptr, n_ptr, h


def export_memory_stages(model, folder, objects: int = 1, cond_slots: int = 4, max_obj_ptrs: int = 16,
                         opset: int = 17) -> dict[str, Path]:
    """Write ``memory_attention.onnx`` and ``memory_encoder.onnx`` (fixed shapes: ``objects`` per batch, the
    streaming session's memory capacity) into ``folder``; returns their paths."""
    if not hasattr(model, "memory_attention"):
        raise InputError(f"{type(model).__name__} is not a video model: the memory graphs need a SAM 2 model")
    if objects < 1:
        raise InputError(f"objects must be >= 1, got {objects}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    s = model.contract.image.input_size
    c = int(model.no_mem_embed.shape[-1])
    mem_dim = int(model.maskmem_tpos_enc.shape[-1])
    m, n_ptr, h = memory_layout(model, cond_slots, max_obj_ptrs)
    vision = torch.randn(1, c, h, h)
    jobs = {
        "memory_attention": (
            MemoryAttentionStage(model, n_ptr),
            (vision, torch.randn(1, c, h, h), torch.randn(objects, m, mem_dim), torch.randn(objects, m, mem_dim),
             torch.ones(objects, m, dtype=torch.bool)),
            ["vision", "vision_pos", "memory", "memory_pos", "memory_mask"], ["conditioned"]),
        "memory_encoder": (
            MemoryEncoderStage(model),
            (vision, torch.randn(objects, 1, s, s), torch.randn(objects, 1), torch.zeros(objects, 1, dtype=torch.bool)),
            ["vision", "masks", "object_score_logits", "binarize"], ["memory", "memory_pos"]),
    }
    paths = {}
    for name, (module, args, inputs, outputs) in jobs.items():
        module.eval()  # the exporter restores a module's mode after tracing: a new module (training) would put the
        # model's shared submodules into training mode (dropout on) for good
        path = folder / f"{name}.onnx"
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(tmp), input_names=inputs, output_names=outputs, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        paths[name] = path
    return paths
