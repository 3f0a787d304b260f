"""Engine latency, side by side with the authors' reference eager PyTorch, on the same random weights.

    python benchmarks/engines.py --out benchmarks/engines.json [--models mobilesam,...] [--repeats 5]

For each family: image-encoder latency and full-pipeline latency (set_image + one box prompt, masks at
the original size) of the reference implementation (its SamPredictor, torchvision/timm stubbed as in the
tests), swiftsam torch (fp32, fp32 channels_last, bf16 autocast, bf16 + torch.compile with freezing) and
swiftsam onnxruntime (fp32).
Median of ``--repeats`` runs after ``--warmup`` runs, all in one process. Also reports how far each
engine's embedding and masks are from the fp32 torch ones. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import swiftsam  # noqa: E402
from swiftsam import Predictor  # noqa: E402
from swiftsam.engines.optimize import count_foldable  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.masks import mask_iou  # noqa: E402
from swiftsam.zoo.checkpoint import load_checkpoint  # noqa: E402
from tests.conftest import randomize_  # noqa: E402  (installs the torchvision/timm stubs the references need)
from tests.reference_models import reference_efficientvit, reference_mobilesam, reference_sam_vit  # noqa: E402


REFERENCES = {
    "sam-vit-b": (lambda: reference_sam_vit("b"), "segment_anything"),
    "mobilesam": (reference_mobilesam, "mobile_sam"),
    "efficientvit-sam-l0": (lambda: reference_efficientvit("l0"), "efficientsam"),
    "efficientvit-sam-xl0": (lambda: reference_efficientvit("xl0"), "efficientsam"),
    "nanosam-r18": (None, None),  # NanoSAM ships no eager PyTorch predictor on PyPI (TensorRT only)
}

ENGINES = {
    "torch fp32": ("torch", {}),
    "torch fp32 channels_last": ("torch", {"channels_last": True}),
    "torch bf16 no BN folding": ("torch", {"dtype": "bf16", "channels_last": True, "fold_bn": False}),
    "torch bf16": ("torch", {"dtype": "bf16", "channels_last": True}),
    "torch bf16 compiled": ("torch", {"dtype": "bf16", "channels_last": True, "compile": True}),
    "onnxruntime fp32": ("onnxruntime", {}),
}


def reference_predictor(module: str, model):
    if module == "efficientsam":
        from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

        return EfficientViTSamPredictor(model)
    return __import__(module, fromlist=["SamPredictor"]).SamPredictor(model)


def median_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, image: np.ndarray, box: np.ndarray, repeats: int, warmup: int) -> dict:
    builder, module = REFERENCES[name]
    ours = swiftsam.build(name)
    if builder is not None:
        ref = randomize_(builder(), seed=0).eval()
        load_checkpoint(ours, swiftsam.get_entry(name), ref.state_dict(), "reference")
    else:
        randomize_(ours, seed=0).eval()
    ours.eval()
    s = ours.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(1))
    rows = {}

    if builder is not None:
        ref_pred = reference_predictor(module, ref)

        def ref_encode():
            with torch.inference_mode():
                ref.image_encoder(x)

        def ref_pipeline():
            ref_pred.set_image(image)
            return ref_pred.predict(box=box, multimask_output=False)

        rows["reference eager fp32"] = {
            "encoder_s": median_time(ref_encode, repeats, warmup),
            "pipeline_s": median_time(ref_pipeline, repeats, warmup),
        }

    baseline = None
    for label, (engine, options) in ENGINES.items():
        if "fold_bn" in options and count_foldable(ours.image_encoder) == 0:
            continue  # nothing to fold: the row would repeat "torch bf16"
        pred = Predictor(ours, engine=engine, **options)

        def encode():
            pred.engine.encode(x)

        def pipeline():
            pred.set_image(image)
            return pred.predict(box=box, multimask_output=False)

        row = {"encoder_s": median_time(encode, repeats, warmup), "pipeline_s": median_time(pipeline, repeats, warmup)}
        emb = pred.engine.encode(x)
        mask = pipeline()[0][0]
        if baseline is None:
            baseline = (emb, mask)
        row["embedding_max_abs_vs_fp32"] = float((emb - baseline[0]).abs().max())
        row["mask_iou_vs_fp32"] = mask_iou(mask, baseline[1])
        rows[label] = row
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(REFERENCES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    image = load_image(ROOT / "assets" / "snowboard.jpg")
    box = np.array([275, 15, 410, 409], dtype=np.float64)
    machine = {
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor(),
        "cores": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import onnxruntime

        machine["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    results = {"machine": machine, "image": "assets/snowboard.jpg", "repeats": args.repeats, "models": {}}
    for name in args.models.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        results["models"][name] = bench_model(name, image, box, args.repeats, args.warmup)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| model | engine | encoder ms | pipeline ms | pipeline speed-up vs reference | embedding max abs vs fp32 | mask IoU vs fp32 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in results["models"].items():
        ref = rows.get("reference eager fp32")
        for label, r in rows.items():
            speed = f"{ref['pipeline_s'] / r['pipeline_s']:.2f}x" if ref else "-"
            emb = f"{r['embedding_max_abs_vs_fp32']:.1e}" if "embedding_max_abs_vs_fp32" in r else "-"
            miou = f"{r['mask_iou_vs_fp32']:.4f}" if "mask_iou_vs_fp32" in r else "-"
            lines.append(f"| {name} | {label} | {r['encoder_s'] * 1e3:.0f} | {r['pipeline_s'] * 1e3:.0f} | {speed} | {emb} | {miou} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
