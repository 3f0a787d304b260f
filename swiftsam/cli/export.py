"""``swiftsam export``: ONNX graphs (and TensorRT engines) in a folder with its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..export.onnx import OPSET, export_onnx
from ..utils import atomic_path, check_output_dir, writing
from .common import add_device_argument, add_input_size_argument, load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a model to ONNX graphs (or TensorRT engines)")
    e.add_argument("model")
    e.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    e.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    e.add_argument("--out", required=True, help="output folder (graphs + manifest.json)")
    e.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="TensorRT engine precision")
    e.add_argument("--parts", default="encoder,decoder,sam_decoder",
                   help="comma-separated: encoder, decoder (batched), sam_decoder (SAM's ONNX interface)")
    e.add_argument("--opset", type=int, default=OPSET)
    e.add_argument("--sam-single-mask", action="store_true",
                   help="sam_decoder returns one mask, chosen as SAM's return_single_mask export does")
    add_input_size_argument(e)
    add_device_argument(e, default="cpu", why=": the graphs do not depend on it; tensorrt engines build on cuda")
    e.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    if args.precision != "fp32" and args.format == "onnx":
        raise InputError("ONNX graphs are exported in fp32; reduced precision is chosen when an engine is built "
                         "(--format tensorrt --precision fp16).")
    if args.format == "tensorrt":
        from ..engines.tensorrt_engine import _trt

        _trt()  # a clear error before any work when TensorRT or the GPU is missing
    check_output_dir(args.out, "--out")  # before the model is loaded and traced
    model = load_model(args, args.model)
    with writing(args.out, "--out"):  # a full disk or a folder that turns read-only: a clear error
        manifest = export_onnx(model, args.out, args.parts.split(","), opset=args.opset,
                               sam_single_mask=args.sam_single_mask)
    for part, info in manifest["files"].items():
        print(f"{part:12s} {Path(args.out) / info['file']}  ({', '.join(info['inputs'])} -> {', '.join(info['outputs'])})")
    if args.format == "tensorrt":
        import shutil

        from ..engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(model.to("cuda"), precision=args.precision, onnx_dir=args.out)
        for part, path in engine.paths.items():
            with writing(args.out, "--out"), atomic_path(Path(args.out) / f"{part}.{args.precision}.engine") as tmp:
                shutil.copy2(path, tmp)
            print(f"{part:12s} {Path(args.out) / f'{part}.{args.precision}.engine'}  (TensorRT {args.precision})")
    return 0
