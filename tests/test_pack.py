"""swiftsam pack: COCO and DAVIS sources into one class-agnostic training set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from swiftsam.errors import InputError
from swiftsam.eval.dataset import CocoImages
from swiftsam.train.pack import Source, pack
from tests.conftest import SHARED

DAVIS = SHARED / "davis2016"
COCO = SHARED / "coco-mini"


def test_pack_resizes_images_and_masks_together(tmp_path):
    sources = [Source.parse(f"coco:{COCO}/val2017:{COCO}/annotations/instances_val2017.json"),
               Source.parse(f"davis:{DAVIS}")]
    summary = pack(sources, tmp_path, size=160, davis_stride=20, progress=False)
    assert summary["sources"]["davis2016"]["images"] == sum(
        len(range(0, len(list(p.glob("*.jpg"))), 20)) for p in (DAVIS / "JPEGImages").iterdir())
    data = CocoImages(tmp_path / "images", tmp_path / "instances.json")
    assert len(data.image_ids) == summary["images"] and {c["id"] for c in data.coco.dataset["categories"]} == {1}
    # a DAVIS frame: the packed mask is the original mask resized with the image
    info = next(i for i in data.coco.dataset["images"] if i["source"].startswith("davis2016/blackswan/00000"))
    assert max(info["width"], info["height"]) == 160
    mask = data.gt_mask(data.annotations(info["id"])[0])
    original = np.asarray(Image.open(DAVIS / "Annotations/blackswan/00000.png").convert("L").resize(
        (info["width"], info["height"]), Image.BILINEAR)) > 127
    assert (mask == original).mean() > 0.99 and mask.sum() > 100
    # crowd regions are dropped; every annotation has a box inside its image
    raw = json.loads((COCO / "annotations/instances_val2017.json").read_text())
    coco_objects = summary["sources"]["coco-mini/val2017"]["objects"]
    assert coco_objects <= sum(1 for a in raw["annotations"] if not a["iscrowd"])
    for ann in data.coco.dataset["annotations"][:50]:
        img = data.coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"] and ann["area"] >= 16


def test_pack_rejects_bad_sources(tmp_path):
    with pytest.raises(InputError, match="bad source"):
        Source.parse("voc:somewhere")
    with pytest.raises(InputError, match="not a DAVIS root"):
        pack([Source.parse(f"davis:{tmp_path}")], tmp_path / "out", progress=False)
