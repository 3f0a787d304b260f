"""Small building blocks shared by the image encoders and the mask decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


PLAIN_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def is_plain(*modules: nn.Module) -> bool:
    """Every module is exactly a torch Linear / Conv2d / ConvTranspose2d, not a subclass: the quantized twins
    (fake-quant layers, TinySAM's W8A8) subclass them with their own forward, so code that reads ``weight``
    directly (reassociated attention, the upscaling as matrix products, split qkv, cast copies) must leave them
    to their modules."""
    return all(type(m) in PLAIN_LAYERS for m in modules)


def cast_floats(x, dtype: torch.dtype):
    """Floating tensors in ``x`` (a tensor, or lists / tuples / dicts of them) in ``dtype``; the rest as it is.
    What a cast copy of a module (weights in ``dtype``) is fed on entry and gives back as float32."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if isinstance(x, (list, tuple)):
        return type(x)(cast_floats(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: cast_floats(v, dtype) for k, v in x.items()}
    return x


def inference_cache_key(*tensors: torch.Tensor) -> tuple | None:
    """A key under which a value computed from ``tensors`` (parameters or buffers) may be kept between calls, or
    None where it must be computed afresh: with autograd on (training, or a gradient wanted through it), while
    tracing, exporting or compiling, or for inference tensors (they keep no version counter). The key holds each
    tensor's version counter, storage, dtype and device, so a load_state_dict, an optimiser step, an in-place
    update or a move changes it; and whether inference mode is on (its tensors cannot enter autograd later)."""
    if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or any(t.is_inference() for t in tensors)):
        return None
    return (torch.is_inference_mode_enabled(), *((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(dim=1, keepdim=True)
        normed = centred / torch.sqrt(var + self.eps)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (transformer feed-forward)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (decoder heads); ``sigmoid_output`` puts a
    sigmoid on the result (SAM 2's IoU head)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MLPStack(nn.ModuleList):
    """One ``MLP`` per token (the decoders' hypernetwork heads), run as one batched product per layer: B x M x C
    tokens in, B x M x out out, token i through MLP i. The stacked weights are kept between calls where
    ``inference_cache_key`` allows. Quantized twins (layers other than ``nn.Linear``) run MLP by MLP."""

    def __init__(self, mlps) -> None:
        super().__init__(mlps)
        self._cache: tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def _stacked(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = list(zip(*(mlp.layers for mlp in self)))  # per depth, that layer of every MLP
        params = [p for group in layers for lin in group for p in (lin.weight, lin.bias)]
        key = inference_cache_key(*params)
        kept = self._cache  # read once (threads)
        if key is not None and kept is not None and kept[0] == key:
            return kept[1]
        stacked = [(torch.stack([lin.weight.transpose(0, 1) for lin in group]),  # M x in x out
                    torch.stack([lin.bias for lin in group])[:, None])  # M x 1 x out
                   for group in layers]
        if key is not None:
            self._cache = (key, stacked)
        return stacked

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if any(mlp.sigmoid_output or not is_plain(*mlp.layers) for mlp in self):
            return torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self)], dim=1)
        x = tokens.transpose(0, 1)  # M x B x C
        stacked = self._stacked()
        for i, (weight, bias) in enumerate(stacked):
            x = torch.baddbmm(bias, x, weight)
            if i < len(stacked) - 1:
                x = F.relu(x)
        return x.transpose(0, 1)


def set_norm_eps(module: nn.Module, eps: float) -> None:
    """Set ``eps`` of every normalisation layer below ``module`` (EfficientViT-SAM uses 1e-6)."""
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, LayerNorm2d)):
            m.eps = eps
