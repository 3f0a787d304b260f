"""Keypoint prompts vs box prompts vs box-fill on COCO people (benchmarks/apps.md).

    python benchmarks/apps.py --images ../shared/data/coco-persons/val2017 \
        --annotations ../shared/data/coco-persons/annotations/person_keypoints_val2017.json --out benchmarks/apps.json

Each image is encoded once; every prompt variant of every annotated person (with at least one labelled keypoint)
is decoded through ``Predictor.predict_best`` (the prompts ``swiftsam label --keypoints`` builds:
``swiftsam.apps.keypoints.person_prompts``) and scored by mask IoU against the person's ground-truth mask.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swiftsam.apps.keypoints import PersonPrompt, person_prompts, to_people  # noqa: E402
from swiftsam.eval import CocoImages  # noqa: E402
from swiftsam.eval.segmenters import box_fill  # noqa: E402
from swiftsam.masks import mask_iou  # noqa: E402
from swiftsam.modeling.prompt_decoder import choose_outputs  # noqa: E402
from swiftsam.predictor import Predictor  # noqa: E402
from swiftsam.prompts import PromptBatch  # noqa: E402
from swiftsam.transforms import postprocess_masks  # noqa: E402


def variants(full: bool) -> dict[str, object]:
    """name -> "box-fill" | ("box", candidates): the ground-truth box | a PersonPrompt (``swiftsam label
    --keypoints``; ``points=False``: the keypoints' box alone)."""
    out: dict[str, object] = {"box-fill": "box-fill", "gt box (all)": ("box", "all"),
                              "gt box (multimask)": ("box", "multimask")}
    for margin in (0.0, 0.1, 0.2):
        out[f"kp box m{margin} (multimask)"] = PersonPrompt(1, True, margin, candidates="multimask", points=False)
    for cand in ("single", "multimask"):
        out[f"kp points ({cand})"] = PersonPrompt(1, box=False, candidates=cand, points=True)
        out[f"kp points + box m0.1 ({cand})"] = PersonPrompt(1, True, 0.1, candidates=cand, points=True)
    out["kp v>=2 points + box m0.1 (single)"] = PersonPrompt(2, True, 0.1, candidates="single", points=True)
    if full:
        out["kp box m0.1 (single)"] = PersonPrompt(1, True, 0.1, candidates="single", points=False)
        out["kp box m0.1 (all)"] = PersonPrompt(1, True, 0.1, candidates="all", points=False)
        out["kp v>=2 box m0.1 (multimask)"] = PersonPrompt(2, True, 0.1, candidates="multimask", points=False)
    return out


def decode_all(predictor: Predictor, batches: list[tuple[str, PromptBatch, str]]) -> dict[str, np.ndarray]:
    """Every variant's prompts through ``Predictor.decode``, one call per number of prompt points (padding points
    are tokens too: prompts are only joined with others of their own length, so each decodes exactly as alone);
    each variant's outputs chosen by its candidates (the output policy) and upsampled: name -> masks K x H x W."""
    groups: dict[int, list[int]] = {}
    for i, (_, b, _) in enumerate(batches):
        groups.setdefault(b.point_coords.shape[1], []).append(i)
    out = {}
    for members in groups.values():
        low, iou = predictor.decode(PromptBatch.cat([batches[i][1] for i in members]))
        start = 0
        for i in members:
            name, b, cand = batches[i]
            sl = slice(start, start + len(b))
            start += len(b)
            chosen, _ = choose_outputs(low[sl], iou[sl], cand, best=True, **predictor.contract.output_policy())
            up = postprocess_masks(chosen, predictor.original_size, predictor.contract.image.prompt_size,
                                   predictor.contract.image.geometry)[:, 0]
            out[name] = (up > predictor.model.mask_threshold).cpu().numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--model", default="swiftsam-r18")
    p.add_argument("--limit", type=int)
    p.add_argument("--background", action="store_true",
                   help="also the other annotated people's keypoints as background points (needs several people "
                        "per image)")
    p.add_argument("--full", action="store_true", help="every margin and candidate choice")
    p.add_argument("--only", nargs="*", help="only the variants whose names contain one of these")
    p.add_argument("--out")
    args = p.parse_args()
    data = CocoImages(args.images, args.annotations)
    predictor = Predictor(args.model)
    table = variants(args.full)
    if args.background:
        for name, v in list(table.items()):
            if isinstance(v, PersonPrompt) and v.box and v.candidates == "multimask":
                table[name + " + bg people"] = replace(v, background=True)
    if args.only:
        table = {k: v for k, v in table.items() if any(o in k for o in args.only)}
    ious: dict[str, list[float]] = {k: [] for k in table}
    ids = data.image_ids[: args.limit] if args.limit else data.image_ids
    t0 = time.time()
    for n, image_id in enumerate(ids):
        anns = [a for a in data.annotations(image_id) if not a.get("iscrowd") and max(a["keypoints"][2::3]) > 0]
        if not anns:
            continue
        image = data.image(image_id)
        hw = image.shape[:2]
        gts = [data.gt_mask(a) for a in anns]
        people = to_people(anns)
        predictor.set_image(image)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns]).clip(0, [hw[1], hw[0], hw[1], hw[0]])
        batches, kept_of, results = [], {}, {}
        for name, v in table.items():
            if v == "box-fill":
                results[name] = np.stack([box_fill(b, hw) for b in boxes])
                continue
            if isinstance(v, tuple) and v[0] == "box":
                kept_of[name] = list(range(len(anns)))
                batch, cand = PromptBatch.from_pixels(predictor.contract, hw, boxes=boxes), v[1]
            else:
                kept, points, labels, kboxes, _ = person_prompts(people, hw, v)
                kept_of[name] = kept
                if not kept:
                    continue
                batch, cand = PromptBatch.from_pixels(predictor.contract, hw, points, labels, kboxes), v.candidates
            batches.append((name, batch, cand))
        for name, masks in decode_all(predictor, batches).items():
            full = np.zeros((len(anns), *hw), bool)  # a person without such keypoints: no mask (IoU 0)
            full[kept_of[name]] = masks
            results[name] = full
        for name in table:
            masks = results.get(name, np.zeros((len(anns), *hw), bool))
            ious[name] += [float(mask_iou(m, g)) for m, g in zip(masks, gts)]
        if n % 20 == 0:
            print(f"{n}/{len(ids)} images, {time.time() - t0:.0f} s", file=sys.stderr)
    rows = {k: {"miou": float(np.mean(v)), "count": len(v)} for k, v in ious.items() if v}
    for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["miou"]):
        print(f"{r['miou']:.4f}  ({r['count']})  {k}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "model": args.model, "images": args.images, "annotations": args.annotations, "limit": args.limit,
            "variants": {k: (asdict(v) if isinstance(v, PersonPrompt) else v) for k, v in table.items()},
            "results": rows}, indent=2))


if __name__ == "__main__":
    main()
