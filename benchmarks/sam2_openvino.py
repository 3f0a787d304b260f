"""SAM 2.1 pipeline on the CPU: swiftsam's OpenVINO engine vs sam2's SAM2ImagePredictor, same weights, same precision.

One image (480 x 640) + one box per round, set_image + predict(single mask), rounds interleaved (reference, then
ours) so both see the same load; each call's wall time and this process's CPU time (``time.process_time``: at
``--threads 1`` the figure other processes on a shared machine disturb least). Random weights; the reference holds
the swiftsam model's weights.

    python benchmarks/sam2_openvino.py --model sam2.1-hiera-tiny --precisions fp32,bf16 --rounds 3 \
        --out benchmarks/sam2-openvino.json
    python benchmarks/sam2_openvino.py --precisions fp32 --threads 1 --rounds 5 --out benchmarks/sam2-openvino-fp32-1t.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tests.conftest  # noqa: E402,F401  (torchvision stand-ins for the reference)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import swiftsam  # noqa: E402
from swiftsam import Predictor  # noqa: E402
from tests.conftest import randomize_, test_image  # noqa: E402
from tests.test_sam2 import reference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sam2.1-hiera-tiny")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/sam2-openvino.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = randomize_(swiftsam.build(a.model), seed=1).eval()
    variant = swiftsam.get_entry(a.model).name.split("-")[-1].replace("base-plus", "base_plus")
    variant = {"plus": "base_plus"}.get(variant, variant)
    ref = SAM2ImagePredictor(reference(variant, model))
    image, box = test_image(480, 640), np.array([100, 100, 400, 300])
    rows = []
    for precision in a.precisions.split(","):
        ours = Predictor(model, engine="openvino", precision=precision, threads=a.threads)
        amp = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())

        def theirs():
            with torch.inference_mode(), amp:
                ref.set_image(image)
                ref.predict(box=box, multimask_output=False)

        def mine():
            ours.set_image(image)
            ours.predict(box=box, multimask_output=False)

        def timed(fn):  # wall seconds, and this process's CPU seconds (all its threads)
            t, c = time.perf_counter(), time.process_time()
            fn()
            return time.perf_counter() - t, time.process_time() - c

        theirs(), mine()  # warm-up
        for r in range(a.rounds):
            (ref_s, ref_cpu), (our_s, our_cpu) = timed(theirs), timed(mine)
            rows.append({"model": a.model, "precision": precision, "round": r, "sam2_s": round(ref_s, 3),
                         "swiftsam_openvino_s": round(our_s, 3), "speedup": round(ref_s / our_s, 2),
                         "sam2_cpu_s": round(ref_cpu, 3), "swiftsam_openvino_cpu_s": round(our_cpu, 3),
                         "cpu_speedup": round(ref_cpu / our_cpu, 2), "load": [round(v, 2) for v in os.getloadavg()]})
            print(rows[-1], flush=True)
    Path(a.out).write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                                                  f"torch {torch.__version__}", "threads": a.threads, "rows": rows},
                                      indent=1) + "\n")


if __name__ == "__main__":
    main()
