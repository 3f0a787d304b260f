"""Periodic evaluation during training: the box protocol on a COCO-format validation set.

For each object, the student and (when there is one) the teacher segment its ground-truth box; we
report the student's mIoU against the ground truth, the teacher's, and the student's agreement with
the teacher (mIoU between their masks). Both use NanoSAM's box protocol (best of all four outputs).
"""

from __future__ import annotations

import numpy as np
import torch

from ..eval.coco import BOX_VARIANTS, xywh_to_xyxy
from ..eval.dataset import CocoImages
from ..eval.metrics import mask_iou
from ..image_io import load_image
from ..modeling.sam import Sam
from ..predictor import Predictor


def evaluate_boxes(student: Sam, teacher: Sam | None, data: CocoImages, max_images: int,
                   variant: str = "nanosam") -> dict[str, float]:
    rule = BOX_VARIANTS[variant]
    was_training = {m: m.training for m in student.modules()}
    student.eval()
    try:
        s_pred = Predictor(student, engine="torch", fold_bn=False)
        t_pred = Predictor(teacher, engine="torch", fold_bn=False) if teacher is not None else None
        gt, agree, teacher_gt = [], [], []
        with torch.no_grad():
            for image_id in data.image_ids[:max_images]:
                anns = [a for a in data.annotations(image_id)
                        if not a.get("iscrowd", 0) and (rule["min_area"] is None or a["area"] >= rule["min_area"])]
                if not anns:
                    continue
                image = load_image(data.path(image_id))
                boxes = np.stack([xywh_to_xyxy(a["bbox"], image.shape[:2]) for a in anns])
                s_pred.set_image(image)
                s_masks, _ = s_pred.predict_best(boxes=boxes, candidates=rule["candidates"])
                gts = [data.gt_mask(a) for a in anns]
                gt += [mask_iou(m, g) for m, g in zip(s_masks, gts)]
                if t_pred is not None:
                    t_pred.set_image(image)
                    t_masks, _ = t_pred.predict_best(boxes=boxes, candidates=rule["candidates"])
                    agree += [mask_iou(m, t) for m, t in zip(s_masks, t_masks)]
                    teacher_gt += [mask_iou(t, g) for t, g in zip(t_masks, gts)]
    finally:
        for m, mode in was_training.items():
            m.training = mode
    out = {"objects": float(len(gt)), "miou_gt": float(np.mean(gt)) if gt else float("nan")}
    if agree:
        out["miou_teacher_agreement"] = float(np.mean(agree))
        out["teacher_miou_gt"] = float(np.mean(teacher_gt))
    return out
