"""Post-training W8A8 quantization of a model's image encoder in PyTorch (fake-quant).

Flow: ``prepare`` swaps every Conv2d / ConvTranspose2d / Linear of the encoder for its Quant twin
(same weights), ``calibrate`` runs the calibration images through it while observers record the
inputs of each layer, and the chosen ranges (min-max, percentile or MSE) become int8 scales. The layers,
observers and calibration are modeling building blocks (``swiftsam.modeling.quant``); a W8A8 checkpoint
loads back through ``swiftsam.load`` (``prepare_for_state``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..image_io import list_images
from ..modeling.quant import PARTS, calibrate, prepare
from ..modeling.sam import Sam
from ..train.data import preprocessed


def calibration_images(folder: str | os.PathLike[str], limit: int) -> list[Path]:
    """The first ``limit`` images under ``folder`` (recursively, sorted; ``image_io.IMAGE_SUFFIXES``)."""
    files = list_images(folder, recursive=True, what="calibration")
    if limit < 1:
        raise InputError(f"calibration needs at least 1 image, got {limit}.")
    return files[:limit]


def quantize_torch(model: Sam, inputs: Iterable[torch.Tensor], method: str = "minmax") -> Sam:
    """PTQ of ``model``'s image encoder in place (fake-quant W8A8); returns the model."""
    prepare(model.image_encoder)
    calibrate(model, inputs, method)
    model.quantization = {"scheme": "w8a8", "weights": "int8 symmetric per-channel",
                          "activations": f"int8 affine per-tensor ({method})", "parts": list(PARTS)}
    return model


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


__all__ = ["calibrate", "calibration_images", "prepare", "preprocessed", "quantize_torch",
           "real_int8_linears"]
