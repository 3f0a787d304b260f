"""Post-training W8A8 quantization of a model's image encoder in PyTorch (fake-quant), and the
checkpoint format that keeps the calibrated scales so that ``swiftsam.load`` rebuilds the same model.

Flow: ``prepare`` swaps every Conv2d / ConvTranspose2d / Linear of the encoder for its Quant twin
(same weights), ``calibrate`` runs the calibration images through it while observers record the
inputs of each layer, and the chosen ranges (min-max, percentile or MSE) become int8 scales.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..modeling.sam import Sam
from .layers import QUANT_BUFFERS, QUANT_CLASSES, quant_layers
from .observers import OBSERVERS

PARTS = ("image_encoder",)
CALIB_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


def calibration_images(folder: str | os.PathLike[str], limit: int) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"calibration folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in CALIB_EXTENSIONS)
    if not files:
        raise InputError(f"no images ({', '.join(CALIB_EXTENSIONS)}) under {root}: give a folder of calibration images.")
    if limit < 1:
        raise InputError(f"calibration needs at least 1 image, got {limit}.")
    return files[:limit]


def preprocessed(model: Sam, files: Iterable[Path]) -> Iterable[torch.Tensor]:
    """Each file as the encoder's 1 x 3 x S x S input; unreadable files are an error naming the file."""
    from PIL import Image, UnidentifiedImageError

    for path in files:
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"cannot read calibration image {path}: {e}") from None
        yield model.preprocess(image)[0]


@torch.no_grad()
def calibrate(model: Sam, inputs: Iterable[torch.Tensor], method: str = "minmax", percentile: float = 99.99) -> int:
    """Observe the encoder's layer inputs on ``inputs``, then set every input range; returns #batches."""
    if method not in OBSERVERS:
        raise InputError(f"unknown calibration method {method!r}; choose from {', '.join(OBSERVERS)}.")
    layers = quant_layers(model.image_encoder)
    if not layers:
        raise InputError("the image encoder has no quantized layers: call prepare() first.")
    was_training = model.training
    model.eval()
    set_mode(model.image_encoder, "observe")
    seen = 0
    try:
        for x in inputs:
            model.image_encoder(x.to(model.device))
            seen += 1
    finally:
        set_mode(model.image_encoder, "quant")
        model.train(was_training)
    if not seen:
        raise InputError("no calibration images were given.")
    for layer in layers.values():
        layer.set_input_range(*layer.observer.range(method, percentile))
        layer.set_weight_scale()
        layer.observer = None
    return seen


def quantize_torch(model: Sam, inputs: Iterable[torch.Tensor], method: str = "minmax") -> Sam:
    """PTQ of ``model``'s image encoder in place (fake-quant W8A8); returns the model."""
    prepare(model.image_encoder)
    calibrate(model, inputs, method)
    model.quantization = {"scheme": "w8a8", "weights": "int8 symmetric per-channel",
                          "activations": f"int8 affine per-tensor ({method})", "parts": list(PARTS)}
    return model


def quantized_layer_names(state: dict[str, torch.Tensor]) -> list[str]:
    """The layers a state dict stores as quantized (they carry ``in_scale``)."""
    return sorted(k[: -len(".in_scale")] for k in state if k.endswith(".in_scale"))


def prepare_for_state(model: Sam, state: dict[str, torch.Tensor]) -> bool:
    """Make ``model`` take ``state``: swap in Quant layers where the state has quantization buffers."""
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


def is_quant_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in QUANT_BUFFERS


@torch.no_grad()
def real_int8_linears(model: Sam) -> Sam:
    """Real int8 in PyTorch on CPU: dynamic quantization of the encoder's Linear layers (int8 weights,
    activations quantized per batch at run time). Convolutions stay float: eager PyTorch has no
    dynamic int8 convolution. Returns a new model."""
    import copy
    import warnings

    if model.device.type != "cpu":
        raise InputError("PyTorch's int8 kernels run on CPU only; use onnxruntime or TensorRT on GPU.")
    out = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        out.image_encoder = quantize_dynamic(out.image_encoder, {nn.Linear}, dtype=torch.qint8)
    return out
