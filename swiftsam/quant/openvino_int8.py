"""INT8 for the OpenVINO engine: NNCF post-training quantization of the image encoder's IR on calibration images.

``quantize_openvino`` converts the model (``engines.openvino_engine.convert_ir``), quantizes the fp32 encoder IR
with ``nncf.quantize`` (per-channel symmetric int8 weights, int8 activations from the calibration images'
ranges; the transformer preset for the attention encoders, which keeps softmax / layer norm inputs in float) and
writes ``encoder-int8.xml`` into the same cached folder, where ``OpenVINOEngine(model, precision="int8")`` finds
it. The decoder stays fp32.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..engines.openvino_engine import INT8_ENCODER, read_ir_manifest, convert_ir, save_ir, write_ir_manifest
from ..errors import EngineError, InputError
from ..modeling.sam import Sam
from ..optional import require

# encoders built of attention blocks: NNCF's transformer preset (float softmax, layer norm and GELU inputs)
TRANSFORMER_FAMILIES = {"sam", "tinyvit", "efficientvit"}


def _family(model: Sam) -> str | None:
    if not model.zoo_name:
        return None
    from ..zoo import get_entry

    return get_entry(model.zoo_name).family


def quantize_openvino(model: Sam, inputs: Iterable[torch.Tensor], source: str = "onnx",
                      fast_bias_correction: bool = True) -> dict:
    """NNCF PTQ of ``model``'s encoder IR, calibrated on ``inputs`` (encoder inputs, 1 x 3 x S x S each).
    Returns the IR folder's manifest, with its ``quantization`` entry."""
    ov = require("openvino", "OpenVINO INT8 quantization")
    nncf = require("nncf", "OpenVINO INT8 quantization")
    batches = [x.detach().cpu().float().numpy() for x in inputs]
    if not batches:
        raise InputError("no calibration images were given.")
    folder = convert_ir(model, source)
    fp32 = ov.Core().read_model(str(folder / "encoder.xml"))
    name = model.stages["encode"].input_names[0]
    family = _family(model)
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if family in TRANSFORMER_FAMILIES else {}
    try:
        quantized = nncf.quantize(fp32, nncf.Dataset(batches, lambda x: {name: x}), subset_size=len(batches),
                                  fast_bias_correction=fast_bias_correction, **kwargs)
    except Exception as e:  # NNCF raises plain exceptions for graphs it cannot handle
        raise EngineError(f"NNCF could not quantize the {model.zoo_name or 'model'} encoder: {e}") from e
    save_ir(quantized, folder / INT8_ENCODER)
    manifest = read_ir_manifest(folder)
    manifest["files"]["encoder_int8"] = INT8_ENCODER
    manifest["quantization"] = {
        "backend": "openvino", "tool": f"nncf {nncf.__version__}", "parts": ["encoder"],
        "weights": "int8 symmetric per-channel", "activations": "int8 per-tensor (min-max over the calibration set)",
        "preset": "transformer" if kwargs else "default", "calibration_images": len(batches),
    }
    write_ir_manifest(folder, manifest)
    return {**manifest, "folder": str(folder)}
