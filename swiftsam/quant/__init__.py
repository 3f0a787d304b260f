"""Quantization runs: W8A8 post-training quantization (PyTorch fake-quant, ONNX Runtime QDQ), quantization-aware
training, TensorRT INT8 from QDQ graphs, ``swiftsam quantize``. An application layer: the quantized layers and
observers are modeling building blocks (``swiftsam.modeling.quant``) and Q-TinySAM's checkpoint is a zoo format
(``swiftsam.zoo.qtinysam``); their names are re-exported here."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
# the layers, observers and Q-TinySAM's twins are modeling building blocks; their names stay importable here
from ..modeling.quant import (
    OBSERVERS,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    RangeObserver,
    TinySamQuantConv2d,
    TinySamQuantConvTranspose2d,
    TinySamQuantLinear,
    TinySamQuantLinearPost,
    affine_params,
    quant_layers,
)
from .ptq import calibrate, calibration_images, prepare, preprocessed, quantize_torch, real_int8_linears

BACKENDS = ("onnxruntime", "torch", "tensorrt", "openvino")
METHODS = ("ptq", "qat")


def load_qtinysam(path: str | os.PathLike[str]):
    """Q-TinySAM's ``tinysam_w8a8.pth`` at ``path`` as our ``tinysam-w8a8`` model, read without TinySAM's code:
    ``swiftsam.load("tinysam-w8a8", checkpoint=path)`` (the zoo's restricted reader, ``swiftsam.zoo.qtinysam``)."""
    from ..api import load

    return load("tinysam-w8a8", checkpoint=path)


def _model(name: str, checkpoint: str | None, kwargs: dict):
    import torch

    from ..api import build, load

    if checkpoint == "random":  # for experiments and tests: a seeded random initialisation
        torch.manual_seed(0)
        return build(name, **kwargs)
    return load(name, checkpoint=checkpoint, **kwargs)


def run_quantize(model: str, calib: str | os.PathLike[str], out: str | os.PathLike[str], *, checkpoint: str | None = None,
                 method: str = "ptq", backend: str = "onnxruntime", observer: str = "minmax", calib_images: int = 32,
                 activations: str = "uint8", input_size: int | None = None, qat_steps: int = 200,
                 qat_batch_size: int = 4, qat_lr: float = 1e-5, progress: bool = True,
                 val_images: str | None = None, val_annotations: str | None = None, val_count: int = 20) -> dict:
    """``swiftsam quantize``: returns a summary of what was written. With a COCO validation set, the
    summary also holds the quantized model's box-protocol agreement with the float model."""
    val = None
    if (val_images is None) != (val_annotations is None):
        raise InputError("give both --val-images and --val-annotations, or neither.")
    if val_images is not None:
        from ..eval.dataset import CocoImages

        val = CocoImages(val_images, val_annotations)
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    kwargs = {"input_size": input_size} if input_size else {}
    out = Path(out)
    files = calibration_images(calib, calib_images)
    if method == "qat":
        return _run_qat(model, checkpoint, kwargs, calib, out, files, backend, qat_steps, qat_batch_size, qat_lr,
                        progress)
    if backend == "tensorrt":
        from ..engines.tensorrt_engine import _trt

        _trt()  # a clear error before any work when TensorRT or the GPU is missing
    net = _model(model, checkpoint, kwargs)
    summary = _run_ptq(net, model, files, out, backend, observer, activations, val, val_count)
    return summary


def _agreement(float_model, quantized, val, count: int, **engine) -> dict:
    from ..eval.agreement import box_agreement
    from ..predictor import Predictor

    a = Predictor(float_model, engine="torch", fold_bn=False)
    b = Predictor(quantized, **engine) if engine else Predictor(quantized, engine="torch")
    r = box_agreement(a, b, val, count)
    return {"objects": int(r["objects"]), "miou_vs_float": r.get("miou_agreement"),
            "float_miou_gt": r.get("a_miou_gt"), "quantized_miou_gt": r.get("b_miou_gt")}


def _run_ptq(net, model, files, out, backend, observer, activations, val, val_count) -> dict:
    import copy

    float_net = copy.deepcopy(net) if val is not None else None
    if backend == "torch":
        if observer not in OBSERVERS:
            raise InputError(f"the torch backend calibrates with {', '.join(OBSERVERS)}, got {observer!r}.")
        from ..zoo.checkpoint import save_checkpoint

        quantize_torch(net, preprocessed(net, files), observer)
        path = out / "model-w8a8.pt"
        save_checkpoint(net, path)  # with the zoo name, input size and box prior it loads with
        summary = {"backend": "torch", "model": model, "checkpoint": str(path), "observer": observer,
                   "calibration_images": len(files), "quantized_layers": len(quant_layers(net.image_encoder))}
        if val is not None:
            summary["agreement"] = _agreement(float_net, net, val, val_count)
        return summary
    if backend == "openvino":
        from ..engines.openvino_engine import OpenVINOEngine
        from .openvino_int8 import quantize_openvino

        manifest = quantize_openvino(net, preprocessed(net, files))
        summary = {"backend": "openvino", "model": model, "ir_dir": manifest["folder"], **manifest["quantization"]}
        if val is not None:
            summary["agreement"] = _agreement(float_net, net, val, val_count,
                                              engine=OpenVINOEngine(net, precision="int8"))
        return summary
    from .onnx_int8 import count_qdq, quantize_onnx

    manifest = quantize_onnx(net, out, preprocessed(net, files), observer, activations)
    summary = {"backend": backend, "model": model, "onnx_dir": str(out), **manifest["quantization"],
               **count_qdq(out / "encoder.onnx")}
    if backend == "tensorrt":
        from ..engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(net.to("cuda"), precision="fp16", onnx_dir=out)
        summary["engines"] = {part: str(p) for part, p in engine.paths.items()}
    elif val is not None:
        from ..engines import OrtEngine

        summary["agreement"] = _agreement(float_net, net, val, val_count, engine=OrtEngine(net, onnx_dir=out))
    return summary


def _run_qat(model, checkpoint, kwargs, calib, out, files, backend, steps, batch_size, lr, progress) -> dict:
    """Fine-tune the fake-quantized encoder to match the float model's embeddings (distill-encoder with
    the float model as its own teacher), then export a QDQ ONNX encoder."""
    from ..export.onnx import export_onnx
    from ..train import load_config, train
    from .onnx_int8 import count_qdq

    if backend != "onnxruntime":
        raise InputError("QAT exports a QDQ ONNX encoder: use --backend onnxruntime (TensorRT builds from that folder).")
    spec = {"name": model, "checkpoint": checkpoint or "official", "kwargs": kwargs}
    config = load_config(None, {"recipe": "distill-encoder", "student": spec, "teacher": dict(spec), "images": str(calib),
                                "out": str(out / "qat"), "steps": steps, "batch_size": batch_size, "lr": lr,
                                "quantize": "qat", "qat_calibration": len(files), "tensorboard": False,
                                "checkpoint_every": 50, "crop_scale": [0.5, 1.0]})
    info = train(config, progress=progress)
    net = _model(model, str(out / "qat" / "model.pt"), kwargs)
    export_onnx(net, out / "onnx", parts=("encoder", "decoder"))
    return {"backend": "onnxruntime", "method": "qat", "model": model, "checkpoint": str(out / "qat" / "model.pt"),
            "onnx_dir": str(out / "onnx"), "steps": steps, "final_loss": info.get("final_loss") if info else None,
            **count_qdq(out / "onnx" / "encoder.onnx")}


__all__ = ["BACKENDS", "METHODS", "OBSERVERS", "QuantConv2d", "QuantConvTranspose2d", "QuantLinear", "RangeObserver",
           "TinySamQuantConv2d", "TinySamQuantConvTranspose2d", "TinySamQuantLinear", "TinySamQuantLinearPost",
           "affine_params", "calibrate", "calibration_images", "load_qtinysam", "prepare", "preprocessed",
           "quant_layers", "quantize_torch", "real_int8_linears", "run_quantize"]
