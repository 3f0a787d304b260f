"""SAM 2's memory attention: the current frame's features attend to past frames' memories.

Rotary position encoding (axial RoPE) is written in real arithmetic (cos / sin tables applied to
channel pairs), with no complex tensors, so the module exports to ONNX; the RoPE grid follows the
actual feature size (sam2 builds it for a 64 x 64 grid, i.e. 1024-pixel input).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError


def axial_rope_angles(head_dim: int, h: int, w: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Rotation angles (h*w x head_dim/2, float32) of SAM 2's axial RoPE on an ``h x w`` grid.

    Tokens are row-major (x fastest). Channel pair ``j`` (channels ``2j, 2j+1``) turns by
    ``x * f_j`` for the first ``head_dim/4`` pairs and by ``y * f_j`` for the rest, with
    ``f_j = theta ** (-4j / head_dim)``.
    """
    if head_dim % 4:
        raise ValueError(f"axial RoPE needs a head width divisible by 4, got {head_dim}")
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4, dtype=torch.float32, device=device) / head_dim)
    t = torch.arange(h * w, dtype=torch.float32, device=device)
    t_x = torch.remainder(t, w)
    t_y = torch.div(t, w, rounding_mode="floor")
    return torch.cat([t_x[:, None] * freqs, t_y[:, None] * freqs], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2j, 2j+1)`` of ``x`` (... x r*N x D) by the angles behind ``cos`` / ``sin``
    (N x D/2); a sequence ``r`` times the table's length reuses it for each block of N tokens. Computed
    in float32, returned in ``x``'s dtype."""
    n, half = cos.shape
    *lead, length, d = x.shape
    if length % n:
        raise InputError(f"RoPE: {length} tokens are not a whole number of {n}-token grids")
    xf = x.float().reshape(*lead, length // n, n, half, 2)
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.reshape(*lead, length, d).to(x.dtype)


class RoPEAttention(nn.Module):
    """Multi-head attention with axial RoPE on queries and keys (SAM 2's ``RoPEAttention``).

    Queries are an ``h x w`` grid (square unless ``feat_size`` says otherwise). With ``rope_k_repeat``
    the keys may be several grids of the same size (memories of several frames), each rotated like the
    queries; the last ``num_k_exclude_rope`` keys (object pointers) are not rotated. Keys come in
    ``kv_in_dim`` wide. Module names equal sam2's.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # not state: rebuilt on demand

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def rope_tables(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (h*w x head_dim/2, float32) for an ``h x w`` grid, cached per size and device."""
        key = (h, w, str(device))
        tables = self._tables.get(key)
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if tables is None or exporting:
            angles = axial_rope_angles(self.internal_dim // self.num_heads, h, w, self.rope_theta, device)
            tables = (angles.cos(), angles.sin())
            if not exporting:
                self._tables[key] = tables
        return tables

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int = 0,
        feat_size: tuple[int, int] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q B x Nq x C, k / v B x Nk x kv_in_dim -> B x Nq x C.

        ``feat_size`` (h, w): the query grid, default square. ``attn_mask``: boolean, broadcastable to
        B x heads x Nq x Nk, True where a query may attend (every query needs at least one key).
        """
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))

        n_q = q.shape[-2]
        if feat_size is None:
            side = math.isqrt(n_q)
            if side * side != n_q:
                raise InputError(f"RoPE attention: {n_q} query tokens are not a square grid; pass feat_size=(h, w)")
            feat_size = (side, side)
        h, w = int(feat_size[0]), int(feat_size[1])
        if h * w != n_q:
            raise InputError(f"RoPE attention: feat_size {h}x{w} does not match {n_q} query tokens")
        n_k_rope = k.shape[-2] - num_k_exclude_rope
        if n_k_rope < 0:
            raise InputError(f"num_k_exclude_rope={num_k_exclude_rope} exceeds the {k.shape[-2]} keys")
        if n_k_rope != n_q and not self.rope_k_repeat:
            raise InputError(
                f"RoPE attention without rope_k_repeat needs as many rotated keys as queries ({n_k_rope} != {n_q})"
            )
        cos, sin = self.rope_tables(h, w, q.device)
        q = apply_rope(q, cos, sin)
        if n_k_rope > 0:
            rotated = apply_rope(k[:, :, :n_k_rope], cos, sin)
            k = torch.cat([rotated, k[:, :, n_k_rope:]], dim=2) if num_k_exclude_rope else rotated

        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        b, _, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * c))


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to the memory, feed-forward."""

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation_str = activation
        self.activation = _ACTIVATIONS[activation]
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        num_k_exclude_rope: int = 0,
        feat_size: tuple[int, int] | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batch-first: tgt B x N x d_model, memory / pos B x M x mem_dim, query_pos B x N x d_model.
        ``memory_mask``: B x M boolean, True for memory tokens to attend to (padding is False)."""
        x = self.norm1(tgt)
        q = x + query_pos if self.pos_enc_at_attn and query_pos is not None else x
        tgt = tgt + self.dropout1(self._attend(self.self_attn, q, q, x, 0, feat_size, None))

        x = self.norm2(tgt)
        q = x + query_pos if self.pos_enc_at_cross_attn_queries and query_pos is not None else x
        k = memory + pos if self.pos_enc_at_cross_attn_keys and pos is not None else memory
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        tgt = tgt + self.dropout2(
            self._attend(self.cross_attn_image, q, k, memory, num_k_exclude_rope, feat_size, mask)
        )

        x = self.norm3(tgt)
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return tgt + self.dropout3(x)

    @staticmethod
    def _attend(attn: nn.Module, q, k, v, num_k_exclude_rope, feat_size, mask) -> torch.Tensor:
        if isinstance(attn, RoPEAttention):
            return attn(q, k, v, num_k_exclude_rope=num_k_exclude_rope, feat_size=feat_size, attn_mask=mask)
        if num_k_exclude_rope or mask is not None:
            raise InputError("num_k_exclude_rope and memory_mask need RoPE attention layers")
        return attn(q, k, v)


class MemoryAttention(nn.Module):
    """``num_layers`` copies of ``layer`` and a final LayerNorm (SAM 2's ``MemoryAttention``).

    Takes and returns sequence-first tensors as sam2 does: curr / curr_pos HW x B x d_model, memory /
    memory_pos M x B x mem_dim, where the memory is the spatial memories of some frames (each an HW grid,
    rotated like the queries) followed by ``num_obj_ptr_tokens`` object-pointer tokens (not rotated).
    """

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first

    def forward(
        self,
        curr: torch.Tensor | list[torch.Tensor],
        memory: torch.Tensor,
        curr_pos: torch.Tensor | list[torch.Tensor] | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
        feat_size: tuple[int, int] | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The current frame's features conditioned on the memory (HW x B x d_model).

        ``feat_size`` (h, w): the current frame's feature grid (default: square). ``memory_mask``:
        B x M boolean, True for valid memory tokens, so a fixed-size, padded memory gives the result of
        the valid tokens alone (an extension over sam2, for fixed-shape export).
        """
        if isinstance(curr, (list, tuple)):
            if len(curr) != 1 or not isinstance(curr_pos, (list, tuple)) or len(curr_pos) != 1:
                raise InputError("memory attention takes one feature level: curr and curr_pos as lists of one")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise InputError(
                f"batch size differs between the current features ({curr.shape[1]}) and the memory "
                f"({memory.shape[1]}); both are sequence-first (tokens x batch x channels)"
            )
        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos
        if self.batch_first:
            output = output.transpose(0, 1)
            curr_pos = None if curr_pos is None else curr_pos.transpose(0, 1)
            memory = memory.transpose(0, 1)
            memory_pos = None if memory_pos is None else memory_pos.transpose(0, 1)
        for layer in self.layers:
            output = layer(
                output, memory, pos=memory_pos, query_pos=curr_pos, num_k_exclude_rope=num_obj_ptr_tokens,
                feat_size=feat_size, memory_mask=memory_mask,
            )
        output = self.norm(output)
        return output.transpose(0, 1) if self.batch_first else output


def build_memory_attention(
    *, d_model: int = 256, mem_dim: int = 64, num_layers: int = 4, dim_feedforward: int = 2048, dropout: float = 0.1
) -> MemoryAttention:
    """SAM 2.1's memory attention (the same for hiera t / s / b+ / l): 4 pre-norm layers, one head,
    RoPE self-attention and RoPE cross-attention to 64-wide memories, position encoding added at the
    input and to the cross-attention keys, dropout 0.1 (training only)."""
    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=RoPEAttention(
            d_model, num_heads=1, downsample_rate=1, dropout=dropout, kv_in_dim=mem_dim, rope_k_repeat=True
        ),
        d_model=d_model,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(d_model, num_heads=1, downsample_rate=1, dropout=dropout),
    )
    return MemoryAttention(d_model=d_model, pos_enc_at_input=True, layer=layer, num_layers=num_layers)
