"""The OpenVINO engine against torch, onnxruntime and the authors' code, on a busy shared CPU.

    python benchmarks/openvino_cpu.py --models swiftsam-r18,mobilesam --out benchmarks/openvino_cpu.json

The same workloads as ``swiftsam bench`` (``swiftsam.bench.workloads`` / ``reference``: encoder, decoder with
1 and 64 boxes, pipeline from a uint8 image to masks at its size), but measured **round-robin**: each
iteration runs every implementation once, in turn, so load from other processes falls on all of them alike,
and each call records both wall time and this process's CPU time (``time.process_time``) at ``--threads``
threads. On a machine shared with other jobs, CPU time at one thread is the figure that does not depend on
how many other processes run; the ratios are reported for both. Random weights (seed 0) except for models with
bundled weights (``swiftsam-r18``); INT8 needs ``swiftsam quantize MODEL --backend openvino`` first, or
``--calib DIR`` to make it here (the cell is skipped otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402,F401  (torchvision / timm stand-ins for the reference packages)
from swiftsam.bench.reference import reference_workloads, why_no_reference  # noqa: E402
from swiftsam.bench.sweep import _build_model, machine_info  # noqa: E402
from swiftsam.bench.workloads import SwiftsamWorkloads, example_boxes  # noqa: E402
from swiftsam.api import load  # noqa: E402
from swiftsam.engines import get_engine  # noqa: E402
from swiftsam.errors import SwiftSamError  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.runtime import autocast  # noqa: E402
from swiftsam.zoo import get_entry  # noqa: E402

IMPLS = {  # name -> (engine or None for the reference, options, precision)
    "reference fp32": (None, {}, "fp32"),
    "reference bf16": (None, {}, "bf16"),
    "torch fp32": ("torch", {"channels_last": True}, "fp32"),
    "torch bf16": ("torch", {"dtype": "bf16", "channels_last": True}, "bf16"),
    "onnxruntime fp32": ("onnxruntime", {}, "fp32"),
    "openvino fp32": ("openvino", {"precision": "fp32"}, "fp32"),
    "openvino bf16": ("openvino", {"precision": "bf16"}, "bf16"),
    "openvino int8": ("openvino", {"precision": "int8"}, "int8"),
    # an fp32 encoder with a bf16 decoder (a bf16 engine runs both in bf16)
    "torch fp32+bf16 decoder": ("torch", {"channels_last": True, "decoder_dtype": "bf16"}, "fp32"),
    "openvino fp32+bf16 decoder": ("openvino", {"precision": "fp32", "decoder_precision": "bf16"}, "fp32"),
}


def _model(name: str):
    """The bundled weights for models that ship them, else random weights (seed 0) as ``swiftsam bench``."""
    if get_entry(name).bundled is not None:
        return load(name).eval()
    return _build_model(name, None, torch.device("cpu"), 0).eval()


def _int8(model, calib: str | None, count: int) -> None:
    """Make the NNCF INT8 encoder if it is missing and calibration images are given (timing only: the accuracy
    of INT8 is measured by swiftsam quantize --val-images)."""
    from swiftsam.engines.openvino_engine import INT8_ENCODER, ir_folder
    from swiftsam.quant import calibration_images, preprocessed
    from swiftsam.quant.openvino_int8 import quantize_openvino

    if calib and not (ir_folder(model) / INT8_ENCODER).exists():
        quantize_openvino(model, preprocessed(model, calibration_images(calib, count)))


def workloads(name: str, impls: list[str], stages: list[str], threads: int, image: np.ndarray,
              calib: str | None = None, calib_images: int = 16) -> tuple[dict, dict]:
    model = _model(name)
    if "openvino int8" in impls:
        _int8(model, calib, calib_images)
    s = model.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        emb = model.forward_image(x)  # every feature level (SAM 2: three), as swiftsam bench
    size = image.shape[:2]
    calls, skipped = {}, {}
    for impl in impls:
        engine, options, precision = IMPLS[impl]
        try:
            if engine is None:
                reason = why_no_reference(name)
                if reason:
                    raise SwiftSamError(reason)
                w = reference_workloads(model)
                scope = lambda p=precision: autocast(torch.device("cpu"), p)  # noqa: E731
            else:
                if engine in ("onnxruntime", "openvino"):
                    options = {**options, "threads": threads}
                w = SwiftsamWorkloads(model, get_engine(engine, model, **options))
                scope = contextlib.nullcontext
        except SwiftSamError as e:
            skipped[impl] = str(e)
            continue
        fns = {"encoder": w.encoder(x), "decoder 1": w.decoder(emb, example_boxes(1, size), size),
               "decoder 64": w.decoder(emb, example_boxes(64, size), size),
               "pipeline": w.pipeline([image], example_boxes(1, size))}
        for stage in stages:
            calls[(impl, stage)] = (fns[stage], scope)
    return calls, skipped


def run(calls: dict, warmup: int, iterations: int, failed: dict) -> dict:
    """Round-robin timings; a cell that raises (e.g. the authors' predictor under bf16 autocast) is reported in
    ``failed`` and left out of later iterations instead of ending the run."""
    wall, cpu = {k: [] for k in calls}, {k: [] for k in calls}
    with torch.inference_mode():
        for i in range(warmup + iterations):
            for key, (fn, scope) in calls.items():  # round-robin: every implementation once per iteration
                if "|".join(key) in failed:
                    continue
                t, c = time.perf_counter(), time.process_time()
                try:
                    with scope():
                        fn()
                except Exception as e:  # noqa: BLE001  (recorded, the other cells go on)
                    failed["|".join(key)] = f"{type(e).__name__}: {e}"
                    continue
                if i >= warmup:
                    wall[key].append(time.perf_counter() - t)
                    cpu[key].append(time.process_time() - c)
    return {f"{impl}|{stage}": {"wall_median_s": statistics.median(wall[(impl, stage)]),
                                "wall_min_s": min(wall[(impl, stage)]),
                                "cpu_median_s": statistics.median(cpu[(impl, stage)])}
            for impl, stage in calls if wall[(impl, stage)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="swiftsam-r18")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--stages", default="encoder,decoder 1,decoder 64,pipeline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--image", default=str(ROOT / "assets" / "snowboard.jpg"))
    p.add_argument("--calib", help="images to make a missing INT8 encoder from (NNCF)")
    p.add_argument("--calib-images", type=int, default=16)
    p.add_argument("--malloc-tuning", action="store_true",
                   help="apply swiftsam's glibc malloc setting (runtime.tune_cpu_allocator) from the start, for every "
                        "implementation; without it only swiftsam's torch engine sets it (process-wide) when made")
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.malloc_tuning:
        from swiftsam.runtime import tune_cpu_allocator

        tune_cpu_allocator()
    image = load_image(a.image)
    doc = {"machine": machine_info(torch.device("cpu")), "config": vars(a), "models": {}}
    with open("/proc/loadavg") as f:
        doc["loadavg_start"] = f.read().split()[:3]
    for name in a.models.split(","):
        calls, skipped = workloads(name, a.impls.split(","), a.stages.split(","), a.threads, image, a.calib,
                                   a.calib_images)
        failed: dict[str, str] = {}
        doc["models"][name] = {"results": run(calls, a.warmup, a.iterations, failed), "skipped": skipped,
                               "failed": failed}
        print(json.dumps({name: doc["models"][name]}, indent=1), flush=True)
    with open("/proc/loadavg") as f:
        doc["loadavg_end"] = f.read().split()[:3]
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
