"""Q-TinySAM (``tinysam_w8a8.pth``) without TinySAM's source tree.

The authors' file is a whole pickled ``Sam`` module: unpickling it normally imports and runs their code
(and anything else a tampered file names). We read it with PyTorch's restricted ``weights_only``
unpickler, allowing tensors plus one inert record class per *known* global of that file: TinySAM's model
classes, its ``quantization_layer`` classes, and the ``torch.nn`` / timm layers they contain. A record
never runs code; it only keeps the pickled attributes. Any other global (``os.system``, ``eval``, an
unknown class) makes the load fail before anything is built.

The records are then converted: float weights go into our ``tinysam`` model (strictly: every key must
fit), and each quantized layer (``InferQuantLinear``, ``InferQuantLinearPost``, ``InferQuantConv2d``,
``InferQuantConvTranspose2d`` in ``quant_forward`` mode) becomes our twin with the same arithmetic and
the same calibrated intervals:

* weights: ``round(w / w_interval)`` clamped to [-128, 127], ``w_interval`` per block of
  (output rows x input columns) for linears (``n_V`` x ``n_H`` blocks) and per tensor for convolutions;
* linear inputs: ``n_a`` chunks of the feature axis, each with its interval; the ``Post`` variant
  (after GELU) has separate positive and negative intervals;
* convolution inputs: affine, ``round((x - a_bias) / a_interval)``.

``InferQuantMatMul*`` records are kept out: the released TinySAM attention multiplies inline and never
calls them, so they do not change the authors' own outputs either.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError

_MODELING = {
    "sam": ["Sam"],
    "tiny_vit_sam": ["TinyViT", "Conv2d_BN", "DropPath", "PatchEmbed", "MBConv", "PatchMerging", "ConvLayer",
                     "Mlp", "Attention", "TinyViTBlock", "BasicLayer", "LayerNorm2d"],
    "mask_decoder": ["MaskDecoder", "MLP"],
    "prompt_encoder": ["PromptEncoder", "PositionEmbeddingRandom"],
    "transformer": ["TwoWayTransformer", "TwoWayAttentionBlock", "Attention"],
    "common": ["LayerNorm2d", "MLPBlock"],
}
_QUANT = ["InferQuantMatMul", "InferQuantMatMulPost", "InferQuantLinear", "InferQuantLinearPost",
          "InferQuantConv2d", "InferQuantConvTranspose2d"]
_TORCH_NN = {
    "conv": ["Conv2d", "ConvTranspose2d"], "linear": ["Linear", "Identity"], "batchnorm": ["BatchNorm2d"],
    "normalization": ["LayerNorm"], "activation": ["GELU", "ReLU", "Softmax"],
    "container": ["Sequential", "ModuleList"], "sparse": ["Embedding"], "dropout": ["Dropout"],
}


def known_globals() -> list[str]:
    """Every global name a Q-TinySAM pickle may reference (the file was saved from inside the repo,
    so both ``tinysam.modeling...`` and ``modeling...`` spellings are accepted)."""
    names = []
    for prefix in ("tinysam.", ""):
        names += [f"{prefix}modeling.{mod}.{cls}" for mod, classes in _MODELING.items() for cls in classes]
        names += [f"{prefix}quantization_layer.layers.{cls}" for cls in _QUANT]
    names += [f"torch.nn.modules.{mod}.{cls}" for mod, classes in _TORCH_NN.items() for cls in classes]
    names += ["timm.models.layers.drop.DropPath", "timm.layers.drop.DropPath"]
    return names


class Record:
    """An inert stand-in for a pickled module: it stores the pickled attributes and nothing else."""

    source = ""

    def __setstate__(self, state: dict) -> None:
        self.state = dict(state) if isinstance(state, dict) else {"__state__": state}

    @property
    def kind(self) -> str:
        return self.source.rsplit(".", 1)[-1]

    def children(self) -> dict[str, Record]:
        return dict(self.state.get("_modules", {}) or {})

    def tensors(self) -> dict[str, torch.Tensor]:
        skip = set(self.state.get("_non_persistent_buffers_set") or ())  # index tables, pixel mean / std
        out = {}
        for group in ("_parameters", "_buffers"):
            out.update({k: v for k, v in (self.state.get(group) or {}).items() if v is not None and k not in skip})
        return out


def _record_classes() -> list[tuple[type, str]]:
    return [(type("Record_" + name.replace(".", "_"), (Record,), {"source": name}), name) for name in known_globals()]


def restricted_load(path: str | os.PathLike[str]) -> Record:
    """Unpickle ``path`` allowing only tensors and the known Q-TinySAM globals (as inert records)."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_record_classes()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines()
                       if "GLOBAL" in line or "reduce" in line or "Unsupported" in line), str(e).splitlines()[0])
        raise CheckpointError(
            f"refused {path}: it references something that is not part of a Q-TinySAM checkpoint ({detail}). "
            "Nothing from it was run. If this is not the authors' tinysam_w8a8.pth, do not load it."
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from None
    if not isinstance(obj, Record) or obj.kind != "Sam":
        raise CheckpointError(f"{path} does not hold a pickled TinySAM model (found {type(obj).__name__}).")
    return obj


def walk(record: Record, prefix: str = ""):
    yield prefix.rstrip("."), record
    for name, child in record.children().items():
        if isinstance(child, Record):
            yield from walk(child, f"{prefix}{name}.")


# ---------------------------------------------------------------------------- our quantized twins
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
_QUANT_TENSORS = {"a_interval", "w_interval", "a_bias", "a_neg_interval", "split", "A_interval", "B_interval"}


def _is_quant_tensor(name: str) -> bool:
    return name in _QUANT_TENSORS or name.startswith(("n_", "crb_", "pad_"))


def convert(record: Record, build: Callable[[], nn.Module], load_float: Callable[[nn.Module, dict], None]) -> nn.Module:
    """Our model from the records: float weights loaded strictly, quantized layers swapped for twins."""
    floats: dict[str, torch.Tensor] = {}
    quantized: list[tuple[str, Record]] = []
    ignored: list[str] = []
    for path, rec in walk(record):
        if rec.kind.startswith("InferQuantMatMul"):
            ignored.append(path)
            continue
        tensors = rec.tensors()
        if rec.kind in TWINS and rec.state.get("mode") == "quant_forward":
            quantized.append((path, rec))
        for name, t in tensors.items():
            if not _is_quant_tensor(name):
                floats[f"{path}.{name}" if path else name] = t.detach()
    model = build()
    load_float(model, floats)
    for path, rec in quantized:
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, attr)
        twin = TWINS[rec.kind]
        base = next(b for b in twin.__mro__ if b.__module__.startswith("torch.nn"))
        if type(layer) is not base:
            raise CheckpointError(f"{path}: the checkpoint quantizes a {base.__name__} where our model has "
                                  f"{type(layer).__name__}; the file does not match TinySAM's architecture.")
        setattr(parent, attr, twin.from_float(layer, rec.tensors(), rec.state))
    model.quantization = {"scheme": "w8a8", "source": "Q-TinySAM", "quantized_layers": len(quantized),
                          "ignored": ignored}
    return model


def load_qtinysam(path: str | os.PathLike[str]) -> nn.Module:
    """Our ``tinysam`` model with Q-TinySAM's weights and quantization from ``path``."""
    from ..api import build
    from ..zoo import get_entry
    from ..zoo.checkpoint import load_checkpoint

    entry = get_entry("tinysam")
    record = restricted_load(path)
    model = convert(record, lambda: build("tinysam"),
                    lambda m, state: load_checkpoint(m, entry, state, str(path)))
    model.zoo_name = "tinysam-w8a8"
    return model.eval()
