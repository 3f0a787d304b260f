"""``swiftsam export``: ONNX graphs (and TensorRT engines) in a folder with its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..export.onnx import OPSET, export_onnx
from ..utils import atomic_path, check_output_dir, writing
from .common import add_device_argument, add_input_size_argument, load_model

DEFAULT_PARTS = ("encoder", "decoder", "sam_decoder")


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a model to ONNX graphs (or TensorRT engines)")
    e.add_argument("model")
    e.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    e.add_argument("--format", choices=["onnx", "tensorrt", "anylabeling"], default="onnx",
                   help="onnx: swiftsam's graphs + manifest.json; tensorrt: engines too; anylabeling: an encoder "
                        "that takes the raw image (SAM 1 families) or the tool's tensor (SAM 2), the tool's "
                        "decoder interface and its model config YAML, for X-AnyLabeling / AnyLabeling")
    e.add_argument("--out", required=True, help="output folder (graphs + manifest.json, or the anylabeling files)")
    e.add_argument("--name", help="anylabeling: the model's name in the tool and the files' stem "
                                  "(default swiftsam-MODEL-INPUTSIZE)")
    e.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="TensorRT engine precision")
    e.add_argument("--parts", help="comma-separated: encoder, decoder (batched), sam_decoder (SAM's ONNX interface); "
                                   f"default {','.join(DEFAULT_PARTS)}")
    e.add_argument("--opset", type=int, default=OPSET)
    e.add_argument("--sam-single-mask", action="store_true",
                   help="sam_decoder returns one mask, chosen as SAM's return_single_mask export does")
    add_input_size_argument(e)
    add_device_argument(e, default="cpu", why=": the graphs do not depend on it; tensorrt engines build on cuda")
    e.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    if args.precision != "fp32" and args.format in ("onnx", "anylabeling"):
        raise InputError("ONNX graphs are exported in fp32; reduced precision is chosen when an engine is built "
                         "(--format tensorrt --precision fp16).")
    if args.format == "anylabeling":
        return run_anylabeling(args)
    if args.name is not None:
        raise InputError("--name names an AnyLabeling model: it applies to --format anylabeling only.")
    if args.format == "tensorrt":
        from ..engines.tensorrt_engine import _trt

        _trt()  # a clear error before any work when TensorRT or the GPU is missing
    check_output_dir(args.out, "--out")  # before the model is loaded and traced
    model = load_model(args, args.model)
    parts = args.parts.split(",") if args.parts is not None else list(DEFAULT_PARTS)
    with writing(args.out, "--out"):  # a full disk or a folder that turns read-only: a clear error
        manifest = export_onnx(model, args.out, parts, opset=args.opset, sam_single_mask=args.sam_single_mask)
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


def run_anylabeling(args: argparse.Namespace) -> int:
    """The AnyLabeling folder: ``NAME.encoder.onnx``, ``NAME.decoder.onnx`` and ``NAME.yaml`` (export.anylabeling)."""
    from ..export.anylabeling import export_anylabeling

    for flag, given in (("--parts", args.parts is not None), ("--sam-single-mask", args.sam_single_mask)):
        if given:
            raise InputError(f"{flag} does not apply to --format anylabeling: the tool's loader fixes which graphs "
                             f"it loads and which mask it shows.")
    if args.name is not None and (not args.name or any(c in args.name for c in "/\\") or args.name.startswith(".")):
        raise InputError(f"--name {args.name!r} must be a plain file name (no path separators, no leading dot).")
    check_output_dir(args.out, "--out")
    model = load_model(args, args.model)
    with writing(args.out, "--out"):
        config = export_anylabeling(model, args.out, name=args.name, opset=args.opset)
    out = Path(args.out)
    print(f"encoder      {out / config['encoder_model_path']}")
    print(f"decoder      {out / config['decoder_model_path']}")
    print(f"config       {out / (config['name'] + '.yaml')}  (X-AnyLabeling type {config['type']}: load it as a "
          f"custom model)")
    return 0
