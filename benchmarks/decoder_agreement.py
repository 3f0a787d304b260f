"""How much a bf16 mask decoder changes the masks: box-protocol agreement with the fp32 decoder on coco-mini val.

    python benchmarks/decoder_agreement.py --out benchmarks/decoder_agreement.json

For each pair (reference predictor, bf16 predictor) on the same model: mIoU between their masks over every
non-crowd object of ``coco-mini/val2017`` (``swiftsam.eval.agreement.box_agreement``, the nanosam box variant:
one box per object, best of the multimask outputs), and each one's mIoU against the ground truth. The bundled
``swiftsam-r18`` is the only model with trained weights here; random weights say nothing about masks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from swiftsam import Predictor  # noqa: E402
from swiftsam.bench.sweep import machine_info  # noqa: E402
from swiftsam.eval.agreement import box_agreement  # noqa: E402
from swiftsam.eval.dataset import CocoImages  # noqa: E402

# name -> (reference engine + options, compared engine + options)
PAIRS = {
    "torch: decoder bf16 vs fp32 (fp32 encoder)": (("torch", {}), ("torch", {"decoder_dtype": "bf16"})),
    "torch: bf16 (encoder and decoder) vs fp32": (("torch", {}), ("torch", {"dtype": "bf16"})),
    "openvino: decoder bf16 vs fp32 (fp32 encoder)": (
        ("openvino", {"precision": "fp32"}), ("openvino", {"precision": "fp32", "decoder_precision": "bf16"})),
    "openvino: bf16 (encoder and decoder) vs fp32": (
        ("openvino", {"precision": "fp32"}), ("openvino", {"precision": "bf16"})),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="swiftsam-r18")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco-mini"))
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated names from PAIRS")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    data = CocoImages(Path(a.data) / "val2017", Path(a.data) / "annotations" / "instances_val2017.json")
    out = Path(a.out) if a.out else None
    # resumable: pairs already in --out (same model, data and image count) are kept, each new one written at once
    report = json.loads(out.read_text()) if out is not None and out.is_file() else {}
    if (report.get("model"), report.get("max_images")) != (a.model, a.max_images):
        report = {"model": a.model, "data": a.data, "max_images": a.max_images, "results": {}}
    for name in a.pairs.split(","):
        if name in report["results"]:
            print(name, "(done)", json.dumps(report["results"][name]), flush=True)
            continue
        (e1, o1), (e2, o2) = PAIRS[name]
        t = time.perf_counter()
        load = os.getloadavg()[0]
        r = box_agreement(Predictor(a.model, engine=e1, **o1), Predictor(a.model, engine=e2, **o2), data,
                          max_images=a.max_images)
        report["results"][name] = {**r, "seconds": round(time.perf_counter() - t, 1),
                                   "loadavg_start_end": [load, os.getloadavg()[0]]}
        report["machine"] = machine_info(torch.device("cpu"))
        print(name, json.dumps(report["results"][name]), flush=True)
        if out is not None:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=1) + "\n")
            tmp.replace(out)


if __name__ == "__main__":
    main()
