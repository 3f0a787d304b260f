"""Calibration of a prepared model's W8A8 layers: observers record each layer's inputs on calibration
images, and the chosen ranges (min-max, percentile or MSE) become the layers' int8 scales."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...errors import InputError
from .layers import quant_layers, set_mode
from .observers import OBSERVERS


@torch.no_grad()
def calibrate(model: nn.Module, inputs: Iterable[torch.Tensor], method: str = "minmax",
              percentile: float = 99.99) -> int:
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
