"""SAM 2.1 on a shared, loaded CPU: swiftsam vs sam2's SAM2ImagePredictor, interleaved A/B timing.

    python benchmarks/sam2_ab.py --models sam2.1-hiera-tiny --precisions fp32,bf16 --rounds 3 \
        --out benchmarks/sam2-cpu-ab.json

``swiftsam bench`` times one cell after the other; on a machine whose load changes by the minute that compares
different minutes. Here each round runs every implementation once per workload back to back (reference, then
swiftsam), and the result keeps every time, the minimum and the median per side, and the ratio of the
minima and of the medians. Same workloads as ``swiftsam bench --compare-reference`` (swiftsam/bench/workloads.py
and reference.py): the encoder on one normalised 1024 x 1024 image, the decoder with 1 box, the full pipeline
(a 480 x 640 uint8 image and one box -> binary mask). bf16: the torch engine's autocast on our side, autocast
around the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tests.conftest  # noqa: E402,F401  (torchvision stand-ins for sam2)
from swiftsam.api import build  # noqa: E402
from swiftsam.bench.reference import reference_workloads  # noqa: E402
from swiftsam.bench.sweep import machine_info  # noqa: E402
from swiftsam.bench.workloads import SwiftsamWorkloads, example_boxes  # noqa: E402
from swiftsam.engines import get_engine  # noqa: E402
from swiftsam.runtime import autocast  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402


def load_average() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sam2.1-hiera-tiny")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--stages", default="encoder,decoder,pipeline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    box = example_boxes(1, image.shape[:2], 0)
    doc = {"command": "python " + " ".join(sys.argv), "machine": machine_info(dev), "load_before": load_average(),
           "results": []}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name).eval()
        ref = reference_workloads(model)
        size = model.spec.input_size
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            feats = model.forward_image(x)
        for precision in args.precisions.split(","):
            ours = SwiftsamWorkloads(model, get_engine("torch", model, dtype=precision))
            for stage in args.stages.split(","):
                fns = {}
                for side, impl in (("reference", ref), ("swiftsam", ours)):
                    fns[side] = {"encoder": lambda i=impl: i.encoder(x),
                                 "decoder": lambda i=impl: i.decoder(feats, box, image.shape[:2]),
                                 "pipeline": lambda i=impl: i.pipeline([image], box)}[stage]()
                times = {side: [] for side in fns}
                for r in range(args.rounds + 1):  # round 0 warms up
                    for side, fn in fns.items():
                        # the reference under autocast; ours: the torch engine applies its dtype itself
                        scope = autocast(dev, precision) if side == "reference" else contextlib.nullcontext()
                        t = time.perf_counter()
                        with torch.inference_mode(), scope:
                            fn()
                        if r:
                            times[side].append(time.perf_counter() - t)
                row = {"model": name, "precision": precision, "stage": stage, "times_s": times,
                       "min_s": {s: min(t) for s, t in times.items()},
                       "median_s": {s: statistics.median(t) for s, t in times.items()}, "load": load_average()}
                row["speedup_min"] = row["min_s"]["reference"] / row["min_s"]["swiftsam"]
                row["speedup_median"] = row["median_s"]["reference"] / row["median_s"]["swiftsam"]
                print(f"{name} {precision} {stage}: ref {row['min_s']['reference']:.3f}s ours "
                      f"{row['min_s']['swiftsam']:.3f}s (min) x{row['speedup_min']:.2f}, "
                      f"median x{row['speedup_median']:.2f}; load {row['load']}", flush=True)
                doc["results"].append(row)
                with atomic_path(args.out) as tmp:
                    tmp.write_text(json.dumps(doc, indent=1))
    doc["load_after"] = load_average()
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
