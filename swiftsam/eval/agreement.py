"""Agreement between two predictors on the box protocol: how alike their masks are (mIoU between them),
and each one's mIoU against the ground truth. Used to judge a quantized or distilled model against the
model it replaces."""

from __future__ import annotations

import numpy as np

from ..predictor import Predictor
from .coco import BOX_VARIANTS, xywh_to_xyxy
from .dataset import CocoImages
from .metrics import mask_iou


def box_agreement(a: Predictor, b: Predictor, data: CocoImages, max_images: int | None = None,
                  variant: str = "nanosam") -> dict[str, float]:
    rule = BOX_VARIANTS[variant]
    agree, a_gt, b_gt = [], [], []
    for image_id in data.image_ids[:max_images]:
        anns = [x for x in data.annotations(image_id)
                if not x.get("iscrowd", 0) and (rule["min_area"] is None or x["area"] >= rule["min_area"])]
        if not anns:
            continue
        image = data.image(image_id)
        boxes = np.stack([xywh_to_xyxy(x["bbox"], image.shape[:2]) for x in anns])
        gts = [data.gt_mask(x) for x in anns]
        masks = []
        for p in (a, b):
            p.set_image(image)
            masks.append(p.predict_best(boxes=boxes, candidates=rule["candidates"])[0])
        agree += [mask_iou(m, n) for m, n in zip(*masks)]
        a_gt += [mask_iou(m, g) for m, g in zip(masks[0], gts)]
        b_gt += [mask_iou(m, g) for m, g in zip(masks[1], gts)]
    if not agree:
        return {"objects": 0.0}
    return {"objects": float(len(agree)), "miou_agreement": float(np.mean(agree)),
            "a_miou_gt": float(np.mean(a_gt)), "b_miou_gt": float(np.mean(b_gt))}
