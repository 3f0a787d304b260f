"""Segment everything with trained weights: how many ground-truth objects the grid and the hierarchical
strategies find, and how long each takes, on coco-mini val (held out from the model's training).

    python benchmarks/everything_recall.py [--model swiftsam-r18] [--images 20] [--out benchmarks/everything_recall.json]

Recall@0.5: the fraction of ground-truth instances (non-crowd, area >= --min-area px) that some generated
mask overlaps with IoU >= 0.5; also the mean best IoU per instance, masks per image and seconds per image
(one warm-up image first). Both strategies get the same generator settings; the hierarchical one adds
TinySAM's sparse-then-dense schedule with its logit threshold (--high-score-thresh).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import swiftsam  # noqa: E402
from swiftsam.eval.dataset import CocoImages  # noqa: E402
from swiftsam.everything import SAM_DEFAULTS, MaskGenerator  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402

VAL = ROOT.parent / "shared" / "data" / "coco-mini"


def best_ious(masks: list[np.ndarray], gts: list[np.ndarray]) -> list[float]:
    if not masks:
        return [0.0] * len(gts)
    pred = np.stack(masks).reshape(len(masks), -1).astype(np.float32)
    out = []
    for g in gts:
        g = g.reshape(-1).astype(np.float32)
        inter = pred @ g
        union = pred.sum(1) + g.sum() - inter
        out.append(float((inter / np.maximum(union, 1)).max()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swiftsam-r18")
    ap.add_argument("--images", type=int, default=20)
    # unset: the model's calibrated defaults (swiftsam/zoo/models.py), else SAM's
    ap.add_argument("--points-per-side", type=int)
    ap.add_argument("--pred-iou-thresh", type=float)
    ap.add_argument("--stability-score-thresh", type=float)
    ap.add_argument("--stability-score-offset", type=float)
    ap.add_argument("--high-score-thresh", type=float)
    ap.add_argument("--min-area", type=float, default=0.0)
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "everything_recall.json"))
    args = ap.parse_args()
    data = CocoImages(VAL / "val2017", VAL / "annotations" / "instances_val2017.json")
    model = swiftsam.load(args.model)
    common = dict(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                  stability_score_thresh=args.stability_score_thresh,
                  stability_score_offset=args.stability_score_offset, engine=args.engine)
    gens = {"grid": MaskGenerator(model, strategy="grid", **common),
            "hierarchical": MaskGenerator(model, strategy="hierarchical", high_score_thresh=args.high_score_thresh,
                                          **common)}
    ids = data.image_ids[: args.images]
    warm = load_image(data.path(ids[0]))
    for g in gens.values():
        g.generate(warm)
    stats = {name: {"ious": [], "seconds": [], "masks": [], "prompts": []} for name in gens}
    for image_id in ids:
        image = load_image(data.path(image_id))
        anns = [a for a in data.annotations(image_id) if not a.get("iscrowd", 0) and a["area"] >= args.min_area]
        gts = [data.gt_mask(a) for a in anns]
        for name, gen in gens.items():
            t = time.perf_counter()
            masks = gen.generate(image)
            stats[name]["seconds"].append(time.perf_counter() - t)
            stats[name]["masks"].append(len(masks))
            stats[name]["prompts"].append(gen.stats.prompts)
            stats[name]["ious"] += best_ious([m["segmentation"] for m in masks], gts)
    rows = {}
    for name, s in stats.items():
        ious = np.array(s["ious"])
        rows[name] = {"recall@0.5": float((ious >= 0.5).mean()), "recall@0.75": float((ious >= 0.75).mean()),
                      "mean_best_iou": float(ious.mean()), "objects": len(ious),
                      "seconds_per_image": float(np.mean(s["seconds"])), "masks_per_image": float(np.mean(s["masks"])),
                      "prompts_per_image": float(np.mean(s["prompts"]))}
        print(name, json.dumps(rows[name]), flush=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}",
              "command": "python " + " ".join(sys.argv), "model": args.model, "images": len(ids),
              "settings": {**common, **{k: getattr(gens["hierarchical"], k) for k in SAM_DEFAULTS},
                           "min_area": args.min_area},
              "rows": rows}
    with atomic_path(Path(args.out)) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
