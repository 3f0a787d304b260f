"""Quantized building blocks: W8A8 fake-quant layers and their observers (swiftsam's PTQ / QAT and its
W8A8 checkpoints), and Q-TinySAM's layers (its checkpoint's arithmetic). The runs that use them (PTQ,
ONNX int8, ``swiftsam quantize``) are in ``swiftsam.quant``."""

from .calibrate import calibrate
from .layers import (
    PARTS,
    QUANT_BUFFERS,
    QUANT_CLASSES,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    prepare,
    prepare_for_state,
    quant_layers,
    quantized_layer_names,
    set_mode,
)
from .observers import OBSERVERS, QMAX, QMIN, RangeObserver, affine_params
from .tinysam import TWINS, TinySamQuantConv2d, TinySamQuantConvTranspose2d, TinySamQuantLinear, TinySamQuantLinearPost

__all__ = ["OBSERVERS", "PARTS", "QMAX", "QMIN", "QUANT_BUFFERS", "QUANT_CLASSES", "TWINS", "QuantConv2d",
           "QuantConvTranspose2d", "QuantLinear", "RangeObserver", "TinySamQuantConv2d", "TinySamQuantConvTranspose2d",
           "TinySamQuantLinear", "TinySamQuantLinearPost", "affine_params", "calibrate", "prepare", "prepare_for_state",
           "quant_layers", "quantized_layer_names", "set_mode"]
