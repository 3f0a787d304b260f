"""Fake-quantized (W8A8) convolutions and linears, for accuracy studies, QAT and QDQ export.

Each layer is a subclass of its float layer, so ``weight`` and ``bias`` keep their state-dict names;
it adds three buffers: ``w_scale`` (per output channel, symmetric int8), ``in_scale`` and
``in_zero_point`` (per tensor, affine int8, from calibration). Quantization uses PyTorch's
``fake_quantize_per_channel_affine`` / ``fake_quantize_per_tensor_affine``: their gradients are the
straight-through estimator (QAT), and the ONNX exporter turns them into QuantizeLinear /
DequantizeLinear pairs, which ONNX Runtime and TensorRT run as int8 kernels.

``prepare`` swaps a module's float layers for these twins (same weights); ``prepare_for_state`` does it for
the layers a saved W8A8 state dict holds, so that ``swiftsam.load`` rebuilds the quantized model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InputError
from .observers import QMAX, QMIN, RangeObserver, affine_params

QUANT_BUFFERS = ("w_scale", "in_scale", "in_zero_point")
PARTS = ("image_encoder",)  # the parts of a Sam that are quantized


class _QuantMixin:
    """State: ``mode`` is "float" (no quantization), "observe" (calibrating) or "quant"."""

    w_axis = 0

    def _init_quant(self) -> None:
        out = self.weight.shape[self.w_axis]
        self.register_buffer("w_scale", torch.ones(out))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("in_zero_point", torch.zeros((), dtype=torch.int32))
        self.mode = "quant"
        self.observer: RangeObserver | None = None

    @classmethod
    def from_float(cls, layer: nn.Module) -> _QuantMixin:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in layer.__dict__.items()
                             if k not in ("_parameters", "_buffers", "_modules")})
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new._modules = dict(layer._modules)
        new._init_quant()
        new.set_weight_scale()
        return new

    def set_weight_scale(self) -> None:
        """Symmetric per-output-channel scale from the current weights (QAT calls it as weights move)."""
        dims = [d for d in range(self.weight.ndim) if d != self.w_axis]
        amax = self.weight.detach().abs().amax(dim=dims).float()
        self.w_scale.copy_(torch.clamp(amax / QMAX, min=1e-8))

    def set_input_range(self, lo: float, hi: float) -> None:
        scale, zero = affine_params(lo, hi)
        self.in_scale.fill_(scale)
        self.in_zero_point.fill_(zero)

    def quant_weight(self) -> torch.Tensor:
        zero = torch.zeros_like(self.w_scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(self.weight, self.w_scale.float(), zero, self.w_axis, QMIN, QMAX)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            if self.observer is None:
                self.observer = RangeObserver()
            self.observer.observe(x)
            return x
        if self.mode == "float":
            return x
        return torch.fake_quantize_per_tensor_affine(x.float(), self.in_scale.float(), self.in_zero_point,
                                                     QMIN, QMAX).to(x.dtype)

    def _w(self) -> torch.Tensor:
        if self.mode != "quant":
            return self.weight
        if self.training:  # QAT: the weight range follows the weights
            with torch.no_grad():
                self.set_weight_scale()
        return self.quant_weight()


class QuantConv2d(_QuantMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quant_input(x), self._w(), self.bias)


class QuantConvTranspose2d(_QuantMixin, nn.ConvTranspose2d):
    w_axis = 1  # weight is (in, out / groups, kh, kw)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if self.groups != 1:
            raise NotImplementedError("grouped transposed convolutions are not quantized")
        return F.conv_transpose2d(self.quant_input(x), self._w(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class QuantLinear(_QuantMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self._w(), self.bias)


QUANT_CLASSES: dict[type, type] = {nn.Conv2d: QuantConv2d, nn.ConvTranspose2d: QuantConvTranspose2d,
                                   nn.Linear: QuantLinear}


def quant_layers(module: nn.Module) -> dict[str, _QuantMixin]:
    return {name: m for name, m in module.named_modules() if isinstance(m, _QuantMixin)}


def prepare(module: nn.Module, names: Iterable[str] | None = None) -> int:
    """Replace float layers of ``module`` by their Quant twins, in place; returns how many.

    ``names``: only these (dotted) layer names, e.g. those a quantized checkpoint holds."""
    wanted = set(names) if names is not None else None
    swaps = []
    for name, child in module.named_modules():
        cls = QUANT_CLASSES.get(type(child))
        if cls is None or (wanted is not None and name not in wanted):
            continue
        if isinstance(child, nn.ConvTranspose2d) and child.groups != 1:
            continue
        swaps.append((name, cls.from_float(child)))
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, new)
    return len(swaps)


def set_mode(module: nn.Module, mode: str) -> None:
    for layer in quant_layers(module).values():
        layer.mode = mode


def quantized_layer_names(state: dict[str, torch.Tensor]) -> list[str]:
    """The layers a state dict stores as quantized (they carry ``in_scale``)."""
    return sorted(k[: -len(".in_scale")] for k in state if k.endswith(".in_scale"))


def prepare_for_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Make ``model`` (a Sam) take ``state``: swap in Quant layers where the state has quantization buffers."""
    names = quantized_layer_names(state)
    if not names:
        return False
    prefix = "image_encoder."
    outside = [n for n in names if not n.startswith(prefix)]
    if outside:
        raise InputError(f"quantized layers outside the image encoder are not supported: {outside[:3]}")
    count = prepare(model.image_encoder, [n[len(prefix):] for n in names])
    if count != len(names):
        raise InputError(f"the checkpoint quantizes {len(names)} layers but only {count} exist in this model.")
    model.quantization = {"scheme": "w8a8", "parts": list(PARTS)}
    return True
