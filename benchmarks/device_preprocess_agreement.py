"""Issue 19: how the GPU path's preprocessing (the uint8 image resized on the device with PIL's bilinear filter rebuilt
in torch, ``transforms.resize_pil_bilinear``) agrees with the CPU path's (PIL on the host), measured as box-mask IoU
of a trained model on real images. Both paths run here on the CPU (``resize_on_device=True`` asks for the device
path), so no GPU is needed.

    python benchmarks/device_preprocess_agreement.py --out benchmarks/device_preprocess_agreement.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import swiftsam  # noqa: E402
from swiftsam.engines import get_engine  # noqa: E402
from swiftsam.image_io import load_image  # noqa: E402
from swiftsam.predictor import Predictor  # noqa: E402
from swiftsam.transforms import preprocess_image  # noqa: E402

COCO = ROOT.parent / "shared" / "data" / "coco-mini"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="swiftsam-r18")
    p.add_argument("--images", default=str(COCO / "val2017"))
    p.add_argument("--annotations", default=str(COCO / "annotations" / "instances_val2017.json"))
    p.add_argument("--out")
    a = p.parse_args()
    torch.set_num_threads(1)
    ann = json.loads(Path(a.annotations).read_text())
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    boxes: dict[int, list] = {}
    for obj in ann["annotations"]:
        if not obj.get("iscrowd") and obj["area"] >= 64:
            boxes.setdefault(obj["image_id"], []).append(obj["bbox"])
    model = swiftsam.load(a.model).eval()
    engine = get_engine("torch", model)
    ious = []
    with torch.inference_mode():
        for image_id, image_boxes in boxes.items():
            image = load_image(Path(a.images) / files[image_id])
            h, w = image.shape[:2]
            predictors = []
            for on_device in (False, True):
                x, _ = preprocess_image(image, model.spec, "cpu", resize_on_device=on_device)
                predictor = Predictor(model, engine=engine)
                predictor.set_image_embedding(engine.encode(x), (h, w))
                predictors.append(predictor)
            for x0, y0, bw, bh in image_boxes:
                box = np.array([x0, y0, x0 + bw, y0 + bh])
                m_host, m_dev = (pr.predict(box=box, multimask_output=False)[0][0] for pr in predictors)
                ious.append(float((m_host & m_dev).sum() / max((m_host | m_dev).sum(), 1)))
    iou = np.array(ious)
    result = {"model": a.model, "images": len(boxes), "boxes": len(ious), "mean_iou": float(iou.mean()),
              "min_iou": float(iou.min()), "share_below_0.99": float((iou < 0.99).mean())}
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
