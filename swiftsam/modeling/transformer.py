"""Two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import MLPBlock, is_plain


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _plain_linears(self) -> bool:
        return is_plain(self.q_proj, self.k_proj, self.v_proj, self.out_proj)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of ``q`` (B x Nq x C) to ``k`` / ``v`` (B x Nk x C; batch 1 broadcasts), plus ``residual``
        (B x Nq x C) if given: the caller's skip connection, which the many-queries path adds inside its last
        product instead of in a pass of its own.

        Between a few prompt tokens and thousands of image tokens, the projections of the image side cost
        far more than the attention itself. When the image side is per prompt (same batch as the tokens) and
        heads x tokens is below the internal width, the products are reassociated so that the image tokens
        meet the few tokens' projected weights instead of being projected themselves (``_few_keys`` /
        ``_few_queries``): the same function, each image token multiplied by ~heads x tokens instead of
        ~2 x internal width columns. Layers other than ``nn.Linear`` (quantized twins) keep the plain path.
        """
        nq, nk, h = q.shape[1], k.shape[1], self.num_heads
        per_prompt = q.shape[0] == k.shape[0] == v.shape[0]
        if per_prompt and self._plain_linears():
            if nq * h < self.internal_dim < nk:
                out = self._few_queries(q, k, v)
                return out if residual is None else residual + out
            if nk * h < self.internal_dim < nq:
                return self._few_keys(q, k, v, residual)
        if nk * h < self.internal_dim < nq and k.shape[0] == v.shape[0] and self._plain_linears():
            return self._few_keys(q, k, v, residual, project_queries=True)
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, fused
        b, h, n, c = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))
        return out if residual is None else residual + out

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few queries (prompt tokens), many keys (image tokens). Per head, q_h . (W_k,h x + b_k,h) =
        (W_k,h^T q_h) . x + const: the key projection moves onto the queries (its bias shifts every score of a
        query equally, which softmax ignores), and sum_j p_j (W_v,h x_j + b_v,h) = W_v,h (sum_j p_j x_j) + b_v,h
        moves the value projection after the weighted sum."""
        b, nq, c = q.shape
        h, d = self.num_heads, self.internal_dim // self.num_heads
        qh = self._heads(self.q_proj(q)) * d ** -0.5  # B x h x Nq x d
        wk = self.k_proj.weight.reshape(h, d, c)
        # the image tokens stay the left operand (k @ W^T, read in their own layout: a bf16 matmul on a CPU
        # copies a transposed right operand first); the scores are a B x hNq x Nk view
        scores = (k @ (qh @ wk).reshape(b, h * nq, c).transpose(1, 2)).transpose(1, 2)
        mixed = (torch.softmax(scores, dim=-1) @ v).reshape(b, h, nq, c)  # sum_j p_j x_j, per head
        wv = self.v_proj.weight.reshape(h, d, c)
        out = mixed @ wv.transpose(1, 2) + self.v_proj.bias.reshape(h, 1, d)  # B x h x Nq x d
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, h * d))

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None = None,
                  project_queries: bool = False) -> torch.Tensor:
        """Many queries (image tokens), few keys (prompt tokens). The output projection moves before the
        weighted sum: out = sum_h P_h (V_h W_o,h^T) + b_o, so each image token takes h x Nk weights instead of
        an internal-width vector and its projection. Each head's weights sum to one, so the output bias rides
        on the stacked values as b_o / h, and the product adds ``residual`` as it goes (``baddbmm``): no pass
        over the image tokens of its own. Unless ``project_queries`` (the queries are shared by every prompt:
        project them once), the query projection moves onto the keys as well:
        (W_q,h x + b_q,h) . k_h = x . (W_q,h^T k_h) + b_q,h . k_h."""
        b = k.shape[0]
        nk, c = k.shape[1], k.shape[2]
        h, d = self.num_heads, self.internal_dim // self.num_heads
        kh = self._heads(self.k_proj(k)) * d ** -0.5  # B x h x Nk x d
        vh = self._heads(self.v_proj(v))  # B x h x Nk x d
        wo = self.out_proj.weight.reshape(c, h, d).permute(1, 2, 0)  # h x d x C
        values = ((vh @ wo) + self.out_proj.bias / h).reshape(b, h * nk, c)  # V_h W_o,h^T + b_o / h, over heads
        # scores keys-major (B x h x Nk x Nq): the softmax over the few keys then runs along the long axis
        if project_queries:
            qh = self._heads(self.q_proj(q))  # Bq x h x Nq x d
            scores = kh @ qh.transpose(-2, -1)
        else:
            wq = self.q_proj.weight.reshape(h, d, c)
            keys = (kh @ wq).reshape(b, h * nk, c)  # B x hNk x C: W_q,h^T k_h
            bias = (kh @ self.q_proj.bias.reshape(h, d, 1)).reshape(b, 1, h * nk)  # b_q,h . k_h
            # the image tokens stay the left operand (B x Nq x hNk, bias added inside the product), then one
            # transposed copy: cheaper than a softmax over rows of Nk
            scores = torch.baddbmm(bias, q, keys.transpose(1, 2)).transpose(1, 2).reshape(b, h, nk, -1)
        probs = torch.softmax(scores, dim=2).reshape(b, h * nk, -1).transpose(1, 2)  # B x Nq x hNk
        if residual is None:
            return probs @ values
        return torch.baddbmm(residual, probs, values)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image, MLP on tokens, image-to-token."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        k = keys + key_pe  # both cross attentions see the image tokens as they enter the block
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        keys = self.norm4(self.cross_attn_image_to_token(k, queries + query_pe, queries, residual=keys))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate, skip_first_layer_pe=i == 0
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image B x C x H x W and tokens B x N x C in; tokens and image tokens (B x HW x C) out."""
        # token-major and contiguous once, so every projection reads memory in order; either input
        # may have batch 1 and broadcast against the prompts' batch
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
