"""INT8 vs float on this CPU: ONNX Runtime encoder latency and box-protocol mask agreement.

    python benchmarks/quantization.py [--models nanosam-r18,mobilesam,efficientvit-sam-l0] [--images 20]
        [--checkpoint MODEL=PATH ...] [--out benchmarks/quantization.json]

For each model: export the float graphs, quantize the encoder with `swiftsam quantize`'s ONNX Runtime
path (QDQ, per-channel int8 weights, uint8 activations, min-max calibration on coco-mini *train*
images), time both encoders (median of --runs calls, batch 1, after warm-up) and segment the
coco-mini *val* ground-truth boxes with both (float decoder in both): mIoU between the masks.
Without --checkpoint a model has seeded random weights (tests.conftest.randomize_), except the project's
own bundled models (swiftsam-r18, swiftsam-r34: trained weights, docs/models.md); random weights say how
int8 treats that network, not a trained one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import swiftsam  # noqa: E402
from swiftsam.engines import OrtEngine  # noqa: E402
from swiftsam.eval.agreement import box_agreement  # noqa: E402
from swiftsam.eval.dataset import CocoImages  # noqa: E402
from swiftsam.export.onnx import export_onnx  # noqa: E402
from swiftsam.predictor import Predictor  # noqa: E402
from swiftsam.quant import calibration_images, preprocessed  # noqa: E402
from swiftsam.quant.onnx_int8 import quantize_onnx  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402
from tests.conftest import randomize_  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "coco-mini"


def time_encoder(engine: OrtEngine, x: torch.Tensor, runs: int) -> float:
    for _ in range(3):
        engine.encode(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        engine.encode(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


class _TorchEncoder:
    def __init__(self, model) -> None:
        self.model = model

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.image_encoder(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="nanosam-r18,mobilesam,efficientvit-sam-l0")
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH")
    p.add_argument("--input-size", action="append", default=[], metavar="MODEL=SIZE")
    p.add_argument("--images", type=int, default=20, help="coco-mini val images for agreement")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--activations", default="uint8", choices=["uint8", "int8"])
    p.add_argument("--torch-int8", action="store_true",
                   help="also time PyTorch's real int8 path (dynamic int8 Linear layers) against the float encoder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "quantization.json"))
    args = p.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    sizes = {k: int(v) for k, v in (c.split("=", 1) for c in args.input_size)}
    val = CocoImages(DATA / "val2017", DATA / "annotations" / "instances_val2017.json")
    calib = calibration_images(DATA / "train2017", args.calib_images)
    rows = []
    for name in args.models.split(","):
        kwargs = {"input_size": sizes[name]} if name in sizes else {}
        if name in checkpoints:
            model, weights = swiftsam.load(name, checkpoint=checkpoints[name], **kwargs), checkpoints[name]
        elif swiftsam.get_entry(name).bundled is not None:  # the project's own trained models
            model, weights = swiftsam.load(name, **kwargs), "bundled (trained, docs/models.md)"
        else:
            model, weights = randomize_(swiftsam.build(name, **kwargs), seed=0), "random (seed 0)"
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, Path(tmp) / "fp32", parts=("encoder", "decoder"))
            t = time.perf_counter()
            quantize_onnx(model, Path(tmp) / "int8", preprocessed(model, calib), "minmax", args.activations)
            quantize_s = time.perf_counter() - t
            fp32 = OrtEngine(model, onnx_dir=Path(tmp) / "fp32")
            int8 = OrtEngine(model, onnx_dir=Path(tmp) / "int8")
            x = next(iter(preprocessed(model, calib[:1])))
            ms_fp32, ms_int8 = time_encoder(fp32, x, args.runs), time_encoder(int8, x, args.runs)
            agree = box_agreement(Predictor(model, engine=fp32), Predictor(model, engine=int8), val, args.images)
        row = {"model": name, "weights": weights, "input_size": model.spec.input_size, "activations": args.activations,
               "encoder_ms_fp32": ms_fp32, "encoder_ms_int8": ms_int8, "speedup": ms_fp32 / ms_int8,
               "quantize_s": quantize_s, **agree}
        if args.torch_int8:
            from swiftsam.quant import real_int8_linears

            with torch.no_grad():
                row["torch_encoder_ms_fp32"] = time_encoder(_TorchEncoder(model), x, args.runs)
                row["torch_encoder_ms_int8_linear"] = time_encoder(_TorchEncoder(real_int8_linears(model)), x, args.runs)
        print(json.dumps(row))
        rows.append(row)
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__,
              "command": "python " + " ".join(sys.argv), "rows": rows}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
