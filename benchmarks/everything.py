"""Segment-everything seconds per image: the reference SamAutomaticMaskGenerator against swiftsam's grid
and hierarchical strategies, on the same random weights, in one process.

    python benchmarks/everything.py --model mobilesam --out benchmarks/everything.json

Random weights (the reference model randomised with seed 0) predict IoUs below 0 for every mask and
logits of at most ~2, so the filters are set for them: the IoU filter is off (pred_iou_thresh 0, as
in both implementations any threshold <= 0 is), which makes this a lower bound on our speed-up, since
upsampling only the IoU-passing masks is one of our savings; stability_score_thresh 7e-4 keeps about a
third of the candidates; hierarchical coverage uses logit 0.0 instead of TinySAM's 8.5. The same parameters go to every generator. The
reference's torchvision ``batched_nms`` is replaced by swiftsam's (the test stub is a slow O(N^2)
Python loop, which would flatter us); everything else in the reference runs as published.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import swiftsam  # noqa: E402
from swiftsam.everything import MaskGenerator, batched_nms  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.zoo.checkpoint import load_checkpoint  # noqa: E402
from tests.conftest import randomize_  # noqa: E402  (installs the torchvision/timm stubs)
from tests.reference_models import reference_mobilesam, reference_sam_vit  # noqa: E402

REFERENCES = {
    "mobilesam": (reference_mobilesam, "mobile_sam"),
    "sam-vit-b": (lambda: reference_sam_vit("b"), "segment_anything"),
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilesam", choices=sorted(REFERENCES))
    p.add_argument("--image", default=str(ROOT / "assets" / "snowboard.jpg"))
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--engines", default="onnxruntime,torch")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    builder, module = REFERENCES[args.model]
    ref_model = randomize_(builder(), seed=0).eval()
    ours = swiftsam.build(args.model)
    load_checkpoint(ours, swiftsam.get_entry(args.model), ref_model.state_dict(), "reference")
    ours.eval()
    image = load_image(args.image)
    params = dict(points_per_side=args.points_per_side, points_per_batch=64, pred_iou_thresh=0.0,
                  stability_score_thresh=7e-4, box_nms_thresh=0.7)
    amg_module = __import__(f"{module}.automatic_mask_generator", fromlist=["SamAutomaticMaskGenerator"])
    amg_module.batched_nms = lambda boxes, scores, idxs, iou_threshold: batched_nms(boxes, scores, idxs, iou_threshold)
    rows = {}

    print("reference ...", file=sys.stderr, flush=True)
    ref_gen = amg_module.SamAutomaticMaskGenerator(ref_model, **params)
    with torch.inference_mode():
        secs, masks = timed(lambda: ref_gen.generate(image))
    rows["reference SamAutomaticMaskGenerator (grid)"] = {
        "seconds": secs, "masks": len(masks), "prompts": args.points_per_side**2}

    for engine in args.engines.split(","):
        for strategy, extra in (("grid", {}), ("hierarchical", {"high_score_thresh": 0.0})):
            print(f"{engine} {strategy} ...", file=sys.stderr, flush=True)
            gen = MaskGenerator(ours, engine=engine, strategy=strategy, **params, **extra)
            gen.generate(image)  # warm-up (exports the ONNX graphs on first use)
            secs, masks = timed(lambda: gen.generate(image))
            st = gen.stats
            rows[f"swiftsam {strategy}, {engine}"] = {
                "seconds": secs, "masks": len(masks), "prompts": st.prompts, "skipped_points": st.skipped_points,
                "masks_decoded": st.masks_decoded, "masks_upsampled": st.masks_upsampled,
                "encode_s": st.seconds.get("encode"), "engine": gen.predictor.engine.describe(),
            }
    machine = {
        "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                    platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor(),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    result = {"machine": machine, "model": args.model, "image": Path(args.image).name,
              "image_size": list(image.shape[:2]), "params": params, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    ref_s = rows["reference SamAutomaticMaskGenerator (grid)"]["seconds"]
    print("| generator | seconds / image | vs reference | decoder prompts | masks |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, r in rows.items():
        print(f"| {label} | {r['seconds']:.1f} | {ref_s / r['seconds']:.2f}x | {r['prompts']} | {r['masks']} |")


if __name__ == "__main__":
    main()
