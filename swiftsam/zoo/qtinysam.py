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
the same calibrated intervals (``swiftsam.modeling.quant.tinysam``).

This is a zoo checkpoint format: the ``tinysam-w8a8`` entry's ``loader``. ``swiftsam.load`` gives it the entry's
builder, so the reader never imports the API above it.

``InferQuantMatMul*`` records are kept out: the released TinySAM attention multiplies inline and never
calls them, so they do not change the authors' own outputs either.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..modeling.quant.tinysam import TWINS
from .checkpoint import load_checkpoint
from .registry import get_entry

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


def load_qtinysam(path: str | os.PathLike[str], build: Callable[[], nn.Module]) -> nn.Module:
    """The model ``build()`` returns (TinySAM's architecture, e.g. ``swiftsam.build("tinysam-w8a8")``) with
    Q-TinySAM's weights and quantization from ``path``. ``swiftsam.load("tinysam-w8a8", checkpoint=path)``
    passes its own ``build``: the zoo entry's ``loader``."""
    entry = get_entry("tinysam")  # the float layout: TinySAM's state-dict keys, head keys ignored
    record = restricted_load(path)
    model = convert(record, build, lambda m, state: load_checkpoint(m, entry, state, str(path)))
    return model.eval()
