"""ONNX Runtime static INT8 quantization (QDQ) of the exported image encoder, for CPU.

``quantize_onnx`` exports the model (encoder + decoder) into an export folder as usual, keeps the float
encoder as ``encoder.fp32.onnx`` and writes ``encoder.onnx`` quantized by onnxruntime's
``quantize_static``: per-channel symmetric int8 weights, int8 activations calibrated on real images,
QuantizeLinear / DequantizeLinear nodes (QDQ) that onnxruntime fuses into int8 kernels and that
TensorRT reads as explicit INT8 precision. The decoder stays float (it is a small share of the time).
The folder works anywhere an export does: ``OrtEngine(model, onnx_dir=...)``, ``--onnx-dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import EngineError, InputError
from ..export.onnx import MANIFEST, export_onnx
from ..modeling.sam import Sam
from ..utils import atomic_path

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def _ort_quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise EngineError("ONNX Runtime quantization needs onnxruntime: pip install 'swiftsam[onnx]'.") from None
    return quantization


def quantize_onnx(model: Sam, out_dir: str | os.PathLike[str], inputs: Iterable[torch.Tensor],
                  method: str = "minmax", activations: str = "int8", per_channel: bool = True) -> dict:
    """Export ``model`` to ``out_dir`` with an int8 QDQ encoder calibrated on ``inputs`` (encoder inputs,
    1 x 3 x S x S). Returns the manifest (with a ``quantization`` entry)."""
    q = _ort_quantization()
    if method not in ORT_METHODS:
        raise InputError(f"onnxruntime calibration method must be one of {', '.join(ORT_METHODS)}, got {method!r}.")
    if activations not in ("int8", "uint8"):
        raise InputError(f"activations must be int8 or uint8, got {activations!r}.")
    batches = [x.detach().cpu().float().numpy() for x in inputs]
    if not batches:
        raise InputError("no calibration images were given.")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x}

    out = Path(out_dir)
    manifest = export_onnx(model, out, parts=("encoder", "decoder"))
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=out) as scratch:
        float_path = out / "encoder.fp32.onnx"
        shutil.copyfile(out / "encoder.onnx", Path(scratch) / "encoder.fp32.onnx")
        tmp = Path(scratch) / "encoder.onnx"
        try:
            q.quantize_static(
                str(Path(scratch) / "encoder.fp32.onnx"), str(tmp), Reader(),
                quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                activation_type=q.QuantType.QInt8 if activations == "int8" else q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=getattr(q.CalibrationMethod, ORT_METHODS[method]),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception as e:  # onnxruntime raises plain exceptions for unsupported graphs
            raise EngineError(f"onnxruntime could not quantize the {model.zoo_name} encoder: {e}") from e
        os.replace(Path(scratch) / "encoder.fp32.onnx", float_path)
        os.replace(tmp, out / "encoder.onnx")
    manifest["quantization"] = {
        "backend": "onnxruntime", "format": "QDQ", "parts": ["encoder"],
        "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
        "activations": f"{activations} affine per-tensor", "calibration": method, "calibration_images": len(batches),
        "float_encoder": "encoder.fp32.onnx",
    }
    manifest["files"]["encoder_fp32"] = {"file": "encoder.fp32.onnx", **{k: v for k, v in manifest["files"]["encoder"].items() if k != "file"}}
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return manifest


def count_qdq(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes (and int8 initializers) a graph has."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear"),
            "int8_initializers": sum(1 for t in graph.initializer if t.data_type in (2, 3))}
