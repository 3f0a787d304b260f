"""The torch engine's decoder alone, in a process of its own: ``Predictor.decode`` of ``--boxes`` boxes on the
features ``set_image`` leaves (channels-last on a CPU), many calls, median / 20th percentile / min (issue 25's
one-box target; the one-process benchmarks of engines.md disturb it). Random weights (seed 0), as ``swiftsam bench``.

    python benchmarks/decoder_one_box.py --models mobilesam,sam2.1-hiera-tiny --dtype bf16 --calls 100 \\
        --out benchmarks/decoder_one_box.json

``--processes N`` runs the measurement in N fresh processes, one after another, and records each: on this VM a
process is either fast or ~25 % slower from its first call to its last, so one process says little.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402,F401  (torchvision / timm stand-ins the zoo's builders may import)
from swiftsam.bench.sweep import _build_model, machine_info  # noqa: E402
from swiftsam.bench.workloads import SwiftsamWorkloads, example_boxes  # noqa: E402
from swiftsam.engines import get_engine  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilesam")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--boxes", type=int, default=1)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--processes", type=int, default=1, help="measure in this many fresh processes, one after another")
    p.add_argument("--target-ms", type=float, default=15.0, help="count the processes whose median is at or under "
                                                                  "this (issue 25: one box <= 15 ms)")
    p.add_argument("--out")
    a = p.parse_args()
    if a.processes < 1:
        p.error(f"--processes must be >= 1, got {a.processes}")
    if a.processes > 1:
        return _in_processes(a)
    torch.set_num_threads(a.threads)
    doc = {"machine": machine_info(torch.device("cpu")), "config": vars(a), "models": {}}
    size = (428, 640)  # assets/snowboard.jpg, as the other decoder benchmarks
    for name in a.models.split(","):
        model = _build_model(name, None, torch.device("cpu"), 0).eval()
        s = model.spec.input_size
        x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            features = model.forward_image(x)
        w = SwiftsamWorkloads(model, get_engine("torch", model, dtype=a.dtype, channels_last=True))
        fn = w.decoder(features, example_boxes(a.boxes, size), size)
        times = []
        with torch.inference_mode():
            for i in range(a.warmup + a.calls):
                t = time.perf_counter()
                fn()
                if i >= a.warmup:
                    times.append(time.perf_counter() - t)
        ms = np.array(times) * 1e3
        doc["models"][name] = {"median_ms": float(np.median(ms)), "p20_ms": float(np.percentile(ms, 20)),
                               "min_ms": float(ms.min())}
        print(name, json.dumps(doc["models"][name]), flush=True)
    with open("/proc/loadavg") as f:
        doc["loadavg_end"] = f.read().split()[:3]
    if a.out:
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))


def _in_processes(a: argparse.Namespace) -> None:
    runs = []
    for i in range(a.processes):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run.json"
            subprocess.run([sys.executable, __file__, "--models", a.models, "--dtype", a.dtype, "--boxes", str(a.boxes),
                            "--calls", str(a.calls), "--warmup", str(a.warmup), "--threads", str(a.threads),
                            "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text()))
        print(f"process {i + 1}:", json.dumps(runs[-1]["models"]), flush=True)
    doc = {"machine": runs[0]["machine"], "config": vars(a), "runs": runs, "models": {}}
    for name in a.models.split(","):
        medians = sorted(r["models"][name]["median_ms"] for r in runs)
        doc["models"][name] = {"process_medians_ms": medians, "median_of_medians_ms": float(np.median(medians)),
                               "processes_within_target": sum(m <= a.target_ms for m in medians)}
        print(name, json.dumps(doc["models"][name]), flush=True)
    if a.out:
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
