"""``swiftsam eval lvis``: LVIS's federated AP rules on top of COCOeval, on an LVIS-format file built from
coco-mini."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from swiftsam.cli import main
from swiftsam.errors import InputError
from swiftsam.eval.lvis import LvisImages, lvis_segm_ap
from swiftsam.masks import encode_mask

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
IMAGES = COCO_MINI / "val2017"
pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason="shared coco-mini data not present")


@pytest.fixture(scope="module")
def lvis_file(tmp_path_factory):
    """4 coco-mini images as LVIS: no crowd regions, categories with r/c/f frequencies, one category verified
    absent from every image (negative) and one more from the first, one image with a category not exhaustively
    annotated; the first image named by coco_url only (LVIS v1)."""
    coco = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    anns = [a for a in coco["annotations"] if not a.get("iscrowd") and isinstance(a["segmentation"], list)]
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    chosen = sorted(i for i, v in by_image.items() if 2 <= len(v) <= 6)[:4]
    used = sorted({a["category_id"] for i in chosen for a in by_image[i]})
    absent = next(c["id"] for c in coco["categories"] if c["id"] not in used)
    categories = [{"id": c["id"], "name": c["name"], "frequency": "rcf"[k % 3]}
                  for k, c in enumerate(c for c in coco["categories"] if c["id"] in (*used, absent))]
    images = []
    for k, im in enumerate(i for i in coco["images"] if i["id"] in chosen):
        entry = {"id": im["id"], "height": im["height"], "width": im["width"],
                 "coco_url": f"http://images.cocodataset.org/val2017/{im['file_name']}",
                 "neg_category_ids": [absent], "not_exhaustive_category_ids": []}
        if k:
            entry["file_name"] = im["file_name"]
        images.append(entry)
    images[1]["not_exhaustive_category_ids"] = [by_image[images[1]["id"]][0]["category_id"]]
    # verified absent from the first image, annotated in another (a category without annotations has no AP)
    negative = next(c for c in used if c not in {a["category_id"] for a in by_image[images[0]["id"]]})
    images[0]["neg_category_ids"].append(negative)
    annotations = [{k: a[k] for k in ("id", "image_id", "category_id", "bbox", "segmentation", "area")}
                   for i in chosen for a in by_image[i]]
    path = tmp_path_factory.mktemp("lvis") / "lvis_mini.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, negative


@pytest.fixture(scope="module")
def dataset(lvis_file):
    return LvisImages(IMAGES, lvis_file[0])


def gt_rows(dataset, shift: int = 0) -> list[dict]:
    rows = []
    for i in dataset.image_ids:
        for a in dataset.annotations(i):
            mask = np.roll(dataset.gt_mask(a), shift, axis=1)
            rows.append({"image_id": i, "category_id": a["category_id"], "score": 1.0,
                         "segmentation": encode_mask(mask)})
    return rows


def test_ground_truth_masks_score_one_and_shifted_masks_less(dataset):
    good = lvis_segm_ap(gt_rows(dataset), dataset, dataset.image_ids)
    assert good["AP"] == pytest.approx(1.0) and good["AP50"] == pytest.approx(1.0)
    assert [good["APr"], good["APc"], good["APf"]] == pytest.approx([1.0] * 3)  # every group has categories here
    shifted = lvis_segm_ap(gt_rows(dataset, shift=12), dataset, dataset.image_ids)
    assert shifted["AP"] < 0.8 and shifted["AP75"] < good["AP75"]


def test_federated_rules(dataset, lvis_file):
    _, negative = lvis_file
    rows = gt_rows(dataset)
    first = dataset.image_ids[0]
    h, w = dataset.size(first)
    corner = np.zeros((h, w), bool)
    corner[:5, :5] = True
    positive = {a["category_id"] for a in dataset.annotations(first)}
    unverified = next(c for c in dataset.frequency if c not in positive | dataset.negative[first]
                      and dataset.coco.getAnnIds(catIds=[c]))

    def ap_with(category: int, image: int = first) -> float:
        extra = {"image_id": image, "category_id": category, "score": 2.0, "segmentation": encode_mask(corner)}
        return lvis_segm_ap([*rows, extra], dataset, dataset.image_ids)["AP"]

    # a category neither annotated nor verified absent in the image: not evaluated there
    assert ap_with(unverified) == pytest.approx(1.0)
    # a category verified absent: a false positive (ranked first)
    assert ap_with(negative) < 1.0
    # an unmatched detection of a positive category: a false positive, unless that category is not exhaustive
    assert ap_with(next(iter(positive))) < 1.0
    image = dataset.image_ids[[i for i, im in enumerate(dataset.image_ids)
                               if dataset.not_exhaustive[im]][0]]
    assert ap_with(next(iter(dataset.not_exhaustive[image])), image) == pytest.approx(1.0)


def test_a_coco_file_is_refused_with_a_hint(tmp_path):
    with pytest.raises(InputError, match="lacks neg_category_ids, not_exhaustive_category_ids.*eval coco"):
        LvisImages(IMAGES, COCO_MINI / "annotations" / "instances_val2017.json")
    bad = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x", "frequency": "q"}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="has frequency 'q'"):
        LvisImages(IMAGES, tmp_path / "bad.json")


def test_cli_ap_follows_the_mask_source(lvis_file, tmp_path, capsys):
    path, _ = lvis_file
    summaries = {}
    for source in (["--baseline", "oracle"], ["--baseline", "box-fill"],
                   ["--model", "swiftsam-r18", "--input-size", "256", "--limit", "2", "--engine", "torch"]):
        out = tmp_path / source[1]
        assert main(["eval", "lvis", "--images", str(IMAGES), "--annotations", str(path), *source,
                     "--out", str(out)]) == 0
        assert "APr" in capsys.readouterr().out
        summaries[source[1]] = json.loads((out / "summary.json").read_text())
    assert summaries["oracle"]["segm"]["AP"] == pytest.approx(1.0)
    assert summaries["box-fill"]["segm"]["AP"] < 0.7
    model = summaries["swiftsam-r18"]
    assert model["images"] == 2 and 0.0 <= model["segm"]["AP"] <= 1.0 and model["config"]["prompts"] == "gt-boxes"


@pytest.mark.parametrize("args,message", [
    (["--protocol", "detections"], "needs --detections FILE"),
    (["--detections", "d.json"], "--detections is for --protocol detections"),
])
def test_cli_protocol_errors(lvis_file, args, message, capsys, tmp_path):
    path, _ = lvis_file
    assert main(["eval", "lvis", "--images", str(IMAGES), "--annotations", str(path), "--baseline", "oracle",
                 "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_detections_protocol(lvis_file, dataset, tmp_path, capsys):
    """Detector boxes from a results JSON: the annotations' own boxes with scores give the oracle AP 1."""
    path, _ = lvis_file
    dets = [{"image_id": i, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for i in dataset.image_ids for a in dataset.annotations(i)]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main(["eval", "lvis", "--images", str(IMAGES), "--annotations", str(path), "--baseline", "oracle",
                 "--protocol", "detections", "--detections", str(tmp_path / "dets.json"),
                 "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["segm"]["AP"] == pytest.approx(1.0) and summary["config"]["prompts"] == "detections"
