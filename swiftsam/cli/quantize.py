"""``swiftsam quantize``: W8A8 quantization of the image encoder (PTQ or QAT)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quantize", help="W8A8 quantization of the image encoder: PTQ or QAT, for onnxruntime, "
                                         "torch (fake-quant) or TensorRT")
    q.add_argument("model")
    q.add_argument("--checkpoint", help="weights file (default: the official checkpoint); 'random' for experiments")
    q.add_argument("--input-size", type=int, help="builder input size (NanoSAM students trained at e.g. 512)")
    q.add_argument("--calib", required=True, help="folder of calibration images (QAT: the training images)")
    q.add_argument("--calib-images", type=int, default=32, help="how many calibration images (default 32)")
    q.add_argument("--method", choices=["ptq", "qat"], default="ptq")
    q.add_argument("--backend", choices=["onnxruntime", "torch", "tensorrt", "openvino"], default="onnxruntime",
                   help="onnxruntime: QDQ int8 encoder in an export folder; torch: fake-quant checkpoint; "
                        "tensorrt: that folder built into INT8 engines; openvino: NNCF int8 encoder IR in the "
                        "OpenVINO cache, which --engine openvino --dtype int8 runs")
    q.add_argument("--observer", choices=["minmax", "percentile", "mse", "entropy"], default="minmax",
                   help="activation range: minmax, percentile (99.99), mse (torch) or entropy (onnxruntime)")
    q.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                   help="onnxruntime activation type (uint8 runs the fast U8S8 kernels on x86)")
    q.add_argument("--qat-steps", type=int, default=200)
    q.add_argument("--qat-batch-size", type=int, default=4)
    q.add_argument("--qat-lr", type=float, default=1e-5)
    q.add_argument("--val-images", help="COCO val images: report the box-protocol agreement with the float model")
    q.add_argument("--val-annotations", help="COCO instances JSON for --val-images")
    q.add_argument("--val-count", type=int, default=20, help="how many val images (default 20)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from ..quant import run_quantize

    summary = run_quantize(args.model, args.calib, args.out, checkpoint=args.checkpoint, method=args.method,
                           backend=args.backend, observer=args.observer, calib_images=args.calib_images,
                           activations=args.activations, input_size=args.input_size, qat_steps=args.qat_steps,
                           qat_batch_size=args.qat_batch_size, qat_lr=args.qat_lr, progress=not args.no_progress,
                           val_images=args.val_images, val_annotations=args.val_annotations, val_count=args.val_count)
    print(json.dumps(summary, indent=2))
    return 0
