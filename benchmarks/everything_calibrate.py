"""Calibrate a model's segment-everything thresholds on coco-mini val (the numbers behind the
``everything`` defaults stored with each model in ``swiftsam/zoo/models.py``).

    python benchmarks/everything_calibrate.py --model swiftsam-r18 --images 4 --points-per-side 16

Every candidate of the point grid (3 multimask outputs per point) is decoded once, with no filter, and
kept with its predicted IoU, its stability score at several offsets, its largest logit and its best IoU
with each ground-truth instance (non-crowd). The filters are then replayed offline for a sweep of
thresholds, with the generator's own box NMS (0.7), reporting masks per image, recall@0.5 and the
mean best IoU per instance. The same decode path as ``MaskGenerator`` (grid strategy, one crop).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import swiftsam  # noqa: E402
from swiftsam import Predictor  # noqa: E402
from swiftsam.eval.dataset import CocoImages  # noqa: E402
from swiftsam.everything.mask_ops import encode_rle, masks_to_boxes, point_grid, stability_score  # noqa: E402
from swiftsam.everything.nms import batched_nms  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.modeling.prompt_decoder import choose_outputs  # noqa: E402
from swiftsam.prompts import PromptBatch  # noqa: E402
from swiftsam.transforms import postprocess_masks  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402

VAL = ROOT.parent / "shared" / "data" / "coco-mini"
OFFSETS = (0.25, 0.5, 1.0)
HIGH = (0.5, 1.0, 1.5, 2.0)


@torch.inference_mode()
def candidates(pred: Predictor, image: np.ndarray, n: int, batch: int, gt_rles: list[dict], mask_utils) -> dict:
    model = pred.model
    hw = image.shape[:2]
    pred.set_image(image)
    pts = point_grid(n) * np.array([hw[1], hw[0]])
    out = {k: [] for k in ("iou", "boxes", "max_logit", "gt_iou", *[f"stab{o}" for o in OFFSETS],
                           *[f"high{h}" for h in HIGH])}
    thr = model.mask_threshold
    for i in range(0, len(pts), batch):
        p = pts[i:i + batch]
        prompts = PromptBatch.from_pixels(model, hw, point_coords=p[:, None], point_labels=np.ones((len(p), 1)),
                                          device=pred.device)
        low, iou = choose_outputs(*pred.decode(prompts), "multimask", multimask_only=model.multimask_only)
        low, iou = low.flatten(0, 1), iou.flatten().float().cpu()
        for s in range(0, len(iou), 48):
            logits = postprocess_masks(low[s:s + 48][:, None].float(), hw, model.spec.prompt_size)[:, 0].cpu()
            masks = logits > thr
            out["iou"].append(iou[s:s + 48])
            out["boxes"].append(masks_to_boxes(masks).float())
            out["max_logit"].append(logits.flatten(1).amax(1))
            for o in OFFSETS:
                out[f"stab{o}"].append(stability_score(logits, thr, o).float())
            area = masks.flatten(1).sum(1).clamp(min=1)
            for h in HIGH:  # the share of a mask the hierarchical strategy would mark as covered
                out[f"high{h}"].append((logits > h).flatten(1).sum(1) / area)
            rles = encode_rle(masks.numpy())
            out["gt_iou"].append(torch.as_tensor(np.asarray(mask_utils.iou(rles, gt_rles, [0] * len(gt_rles)))
                                                 .reshape(len(rles), len(gt_rles)), dtype=torch.float32))
    pred.reset_image()
    return {k: torch.cat(v) for k, v in out.items()}


def replay(c: dict, iou_t: float, stab_t: float, offset: float, nms: float = 0.7) -> tuple[int, np.ndarray]:
    keep = (c["iou"] > iou_t) & (c[f"stab{offset}"] >= stab_t) & (c["boxes"][:, 2] > 0)
    idx = keep.nonzero().flatten()
    if len(idx) == 0:
        return 0, np.zeros(c["gt_iou"].shape[1])
    kept = idx[batched_nms(c["boxes"][idx], c["iou"][idx], torch.zeros(len(idx)), nms)]
    return len(kept), c["gt_iou"][kept].amax(0).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swiftsam-r18")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--first", type=int, default=0, help="skip this many images (by id) first")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "everything_calibrate.json"))
    args = ap.parse_args()
    data = CocoImages(VAL / "val2017", VAL / "annotations" / "instances_val2017.json")
    pred = Predictor(swiftsam.load(args.model), engine=args.engine)
    per_image = []
    for image_id in data.image_ids[args.first:args.first + args.images]:
        anns = [a for a in data.annotations(image_id) if not a.get("iscrowd", 0)]
        gt = [data.encode(data.gt_mask(a)) for a in anns]
        t = time.perf_counter()
        c = candidates(pred, load_image(data.path(image_id)), args.points_per_side, 64, gt, data.mask_utils)
        print(f"image {image_id}: {len(c['iou'])} candidates, {len(gt)} instances, {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)
        per_image.append(c)
    allc = {k: torch.cat([c[k] for c in per_image]) for k in per_image[0] if k != "gt_iou"}
    quant = {k: [round(float(v), 3) for v in torch.nanquantile(allc[k], torch.tensor([0.1, 0.5, 0.9, 0.99]))]
             for k in ("iou", "max_logit", *[f"stab{o}" for o in OFFSETS])}
    quant["high (share of mask pixels above h, median)"] = {h: round(float(allc[f"high{h}"].median()), 3) for h in HIGH}
    print(json.dumps({"quantiles 10/50/90/99%": quant}, indent=1))
    rows = []
    for iou_t, offset, stab_t in itertools.product((0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4), OFFSETS,
                                                  (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)):
        counts, best = zip(*(replay(c, iou_t, stab_t, offset) for c in per_image))
        best = np.concatenate(best)
        rows.append({"pred_iou_thresh": iou_t, "stability_score_offset": offset, "stability_score_thresh": stab_t,
                     "masks_per_image": float(np.mean(counts)), "recall@0.5": float((best >= 0.5).mean()),
                     "mean_best_iou": float(best.mean()), "instances": len(best)})
    for r in rows:
        print(f"pred_iou_thresh {r['pred_iou_thresh']:.2f}  offset {r['stability_score_offset']:.2f}  "
              f"stability {r['stability_score_thresh']:.2f}: {r['masks_per_image']:6.1f} masks/image  "
              f"recall@0.5 {r['recall@0.5']:.3f}  mean best IoU {r['mean_best_iou']:.3f}")
    result = {"command": "python " + " ".join(sys.argv), "model": args.model, "images": len(per_image),
              "points_per_side": args.points_per_side, "quantiles": quant, "rows": rows}
    with atomic_path(Path(args.out)) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
