"""Q-TinySAM's quantized layers as our own modules: the same arithmetic and calibrated intervals as TinySAM's
``InferQuantLinear``, ``InferQuantLinearPost``, ``InferQuantConv2d`` and ``InferQuantConvTranspose2d`` in
``quant_forward`` mode, without their code. ``swiftsam.zoo.qtinysam`` reads the authors' file and swaps these
in (``TWINS``: their class name -> ours).

* weights: ``round(w / w_interval)`` clamped to [-128, 127], ``w_interval`` per block of
  (output rows x input columns) for linears (``n_V`` x ``n_H`` blocks) and per tensor for convolutions;
* linear inputs: ``n_a`` chunks of the feature axis, each with its interval; the ``Post`` variant
  (after GELU) has separate positive and negative intervals;
* convolution inputs: affine, ``round((x - a_bias) / a_interval)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import CheckpointError

_QMAX = 128  # 2 ** (bits - 1) for 8 bits


def _int(t) -> int:
    return int(t.item()) if isinstance(t, torch.Tensor) else int(t)


class _TinySamQuant:
    """Shared: copy a float layer and attach the intervals of a Q-TinySAM record."""

    INTERVALS: tuple[str, ...] = ()

    @classmethod
    def from_float(cls, layer: nn.Module, tensors: dict[str, torch.Tensor], state: dict) -> nn.Module:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters, new._buffers, new._modules = dict(layer._parameters), dict(layer._buffers), dict(layer._modules)
        for name in cls.INTERVALS:
            if name not in tensors:
                raise CheckpointError(f"a {cls.__name__} layer has no {name}: not a Q-TinySAM checkpoint layout.")
            new.register_buffer(name, tensors[name].float().clone())
        new.a_bit = int(state.get("a_bit", 8))
        new.blocks = {k: _int(tensors[k]) for k in ("n_V", "n_H", "n_a", "crb_rows", "crb_cols", "crb_acts") if k in tensors}
        return new

    def quant_weight(self) -> torch.Tensor:
        if "n_V" in self.blocks and self.weight.ndim == 2:
            b = self.blocks
            w = self.weight.view(b["n_V"], b["crb_rows"], b["n_H"], b["crb_cols"])
            return ((w / self.w_interval).round().clamp(-_QMAX, _QMAX - 1) * self.w_interval).view_as(self.weight)
        return (self.weight / self.w_interval).round().clamp(-_QMAX, _QMAX - 1) * self.w_interval


class TinySamQuantLinear(_TinySamQuant, nn.Linear):
    INTERVALS = ("w_interval", "a_interval")

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.stack(torch.chunk(x, self.blocks["n_a"], dim=-1), dim=-2)
        q = (chunks / self.a_interval).round().clamp(-_QMAX, _QMAX - 1) * self.a_interval
        return q.reshape_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_input(x) if self.a_bit < 32 else x
        return F.linear(x, self.quant_weight(), self.bias)


class TinySamQuantLinearPost(TinySamQuantLinear):
    """After GELU: separate intervals for the positive part and the (small) negative part."""

    INTERVALS = ("w_interval", "a_interval", "a_neg_interval")

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.stack(torch.chunk(x, self.blocks["n_a"], dim=-1), dim=-2)
        pos = (chunks / self.a_interval).round().clamp(0, _QMAX - 1) * self.a_interval
        neg = (chunks / self.a_neg_interval).round().clamp(-_QMAX, 0) * self.a_neg_interval
        return (pos + neg).reshape_as(x)


class TinySamQuantConv2d(_TinySamQuant, nn.Conv2d):
    INTERVALS = ("w_interval", "a_interval", "a_bias")

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        q = ((x - self.a_bias) / self.a_interval).round().clamp(-_QMAX, _QMAX - 1)
        return q * self.a_interval + self.a_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_input(x) if self.a_bit < 32 else x
        return self._conv_forward(x, self.quant_weight(), self.bias)


class TinySamQuantConvTranspose2d(_TinySamQuant, nn.ConvTranspose2d):
    INTERVALS = ("w_interval", "a_interval", "a_bias")
    quant_input = TinySamQuantConv2d.quant_input

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        x = self.quant_input(x) if self.a_bit < 32 else x
        return F.conv_transpose2d(x, self.quant_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


TWINS: dict[str, type] = {"InferQuantLinear": TinySamQuantLinear, "InferQuantLinearPost": TinySamQuantLinearPost,
                          "InferQuantConv2d": TinySamQuantConv2d, "InferQuantConvTranspose2d": TinySamQuantConvTranspose2d}
