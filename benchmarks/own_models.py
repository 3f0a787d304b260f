"""The project's own models (docs/models.md) on coco-mini val: box-protocol mIoU of teacher and student,
their mask agreement, and the student's accuracy and encoder latency at several input sizes.

    python benchmarks/own_models.py [--sizes 384,512,640] [--size-images 30] [--out benchmarks/own_models.json]

- mIoU: `swiftsam eval coco`'s box protocol (nanosam variant: every annotation, best of the 4 outputs by
  predicted IoU), resumable results under out/eval/<model>-box; box-fill is recomputed the same way.
- agreement: mIoU between the student's and the teacher's masks for the same ground-truth boxes.
- sizes: the student built at each input size (same weights: the encoder is convolutional and the prompt
  encoder's positional encoding is continuous), its mIoU on the first --size-images val images and its
  encoder's median latency (batch 1, fp32, torch, --runs calls after 3 warm-up calls).
The bundled weights are used unless --teacher / --student name checkpoint files.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import swiftsam  # noqa: E402
from swiftsam.eval.agreement import box_agreement  # noqa: E402
from swiftsam.eval.coco import box_rows, evaluate_coco  # noqa: E402
from swiftsam.eval.dataset import CocoImages  # noqa: E402
from swiftsam.eval.segmenters import BoxFillSegmenter, PredictorSegmenter  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402

VAL = ROOT.parent / "shared" / "data" / "coco-mini"


def encoder_ms(model: swiftsam.Sam, size: int, runs: int) -> float:
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t = time.perf_counter()
            model.image_encoder(x)
            if i >= 3:
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def size_miou(model: swiftsam.Sam, data: CocoImages, n: int) -> float:
    seg = PredictorSegmenter(swiftsam.Predictor(model))
    rows = []
    for image_id in data.image_ids[:n]:
        seg.set_image(load_image(data.path(image_id)), image_id)
        rows += box_rows(data, seg, image_id, "nanosam")
    return float(np.mean([r["iou"] for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True,
                    help="teacher checkpoint (python scripts/restore_teacher.py --out swiftsam-r34.pt)")
    ap.add_argument("--student", help="student checkpoint (default: the bundled swiftsam-r18)")
    ap.add_argument("--sizes", default="384,512,640")
    ap.add_argument("--size-images", type=int, default=30)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "own_models.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    data = CocoImages(VAL / "val2017", VAL / "annotations" / "instances_val2017.json")
    models = {"swiftsam-r34": swiftsam.load("swiftsam-r34", checkpoint=args.teacher),
              "swiftsam-r18": swiftsam.load("swiftsam-r18", checkpoint=args.student)}
    for m in models.values():
        m.box_mask_prior = True  # a checkpoint file has no flag of its own: these models were trained with it
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                               f"torch {torch.__version__}",
                    "checkpoints": {"teacher": args.teacher or "bundled", "student": args.student or "bundled"},
                    "box": {}}
    segmenters = {"box-fill": BoxFillSegmenter(),
                  **{name: PredictorSegmenter(swiftsam.Predictor(m)) for name, m in models.items()}}
    files = {"box-fill": None, "swiftsam-r34": args.teacher, "swiftsam-r18": args.student}
    for name, seg in segmenters.items():
        source = "bundled" if files[name] is None else Path(files[name]).resolve().as_posix().replace("/", "_")
        out = ROOT / "out" / "eval" / "own" / f"{name}-box-{source}"  # resumable per weights
        summary = evaluate_coco(data, seg, out, "box", variant="nanosam", model_name=name,
                                settings={"checkpoint": source}, progress=False)
        result["box"][name] = summary["miou"]
        print(name, json.dumps(summary["miou"]["all"]), flush=True)
    agree = box_agreement(swiftsam.Predictor(models["swiftsam-r18"]), swiftsam.Predictor(models["swiftsam-r34"]),
                          data)
    result["agreement_student_teacher"] = agree
    print("agreement", agree, flush=True)
    result["sizes"] = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        model = swiftsam.load("swiftsam-r18", checkpoint=args.student, input_size=size)
        model.box_mask_prior = True
        row = {"miou": size_miou(model, data, args.size_images), "encoder_ms": encoder_ms(model, size, args.runs)}
        result["sizes"][str(size)] = row
        print("size", size, row, flush=True)
    result["sizes_images"] = args.size_images
    with atomic_path(Path(args.out)) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
