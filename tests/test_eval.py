"""COCO evaluation on the shared coco-mini val subset: protocols, baselines, resume, torchrun, errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import swiftsam
from swiftsam.cli import main
from swiftsam.errors import InputError
from swiftsam.eval import (
    BoxFillSegmenter,
    Clicker,
    CocoImages,
    OracleSegmenter,
    evaluate_coco,
    load_detections,
)
from swiftsam.eval.coco import point_rows
from tests.conftest import ROOT, SHARED, randomize_

COCO = SHARED / "coco-mini"
IMAGES, ANNOTATIONS = COCO / "val2017", COCO / "annotations" / "instances_val2017.json"
pytestmark = pytest.mark.skipif(not ANNOTATIONS.exists(), reason="needs ../shared/data/coco-mini")


@pytest.fixture(scope="module")
def dataset():
    return CocoImages(IMAGES, ANNOTATIONS)


def test_oracle_gives_miou_one_and_ap_one(dataset, tmp_path):
    summary = evaluate_coco(dataset, OracleSegmenter(dataset), tmp_path / "box", "box", progress=False)
    assert summary["rows"] == 951 and summary["images"] == 86
    for size in ("all", "small", "medium", "large"):
        assert summary["miou"][size]["miou"] == 1.0
    assert [summary["miou"][s]["count"] for s in ("small", "medium", "large")] == [394, 362, 195]

    gt = [a for a in dataset.coco.dataset["annotations"] if not a["iscrowd"]]
    dets_path = tmp_path / "dets.json"
    dets_path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                      "score": 1.0} for a in gt]))
    det = evaluate_coco(dataset, OracleSegmenter(dataset), tmp_path / "det", "detections",
                        detections=load_detections(dets_path, dataset), progress=False)
    assert det["segm"]["AP"] == pytest.approx(1.0)
    lines = (tmp_path / "det" / "results.rank0.jsonl").read_text().splitlines()
    assert sum("segmentation" in json.loads(line) for line in lines) == len(gt)


def test_box_fill_matches_an_independent_pycocotools_computation(dataset, tmp_path):
    summary = evaluate_coco(dataset, BoxFillSegmenter(), tmp_path, "box", progress=False)
    coco = dataset.coco
    ious = {"all": [], "small": [], "medium": [], "large": []}
    for ann in coco.dataset["annotations"]:
        info = coco.imgs[ann["image_id"]]
        h, w = info["height"], info["width"]
        x, y, bw, bh = ann["bbox"]
        fill = np.zeros((h, w), np.uint8, order="F")
        fill[max(0, math.floor(y)):min(h, math.ceil(y + bh)), max(0, math.floor(x)):min(w, math.ceil(x + bw))] = 1
        gt_rle = coco.annToRLE(ann)
        iou = float(mask_utils.iou([mask_utils.encode(fill)], [gt_rle], [0])[0, 0])
        a = ann["area"]
        for name, keep in (("all", True), ("small", a <= 32**2), ("medium", 32**2 <= a <= 96**2), ("large", a >= 96**2)):
            if keep:
                ious[name].append(iou)
    for name, values in ious.items():
        assert summary["miou"][name]["count"] == len(values)
        assert summary["miou"][name]["miou"] == pytest.approx(np.mean(values), abs=1e-12)
    assert 0.4 < summary["miou"]["all"]["miou"] < 0.9  # a real, middling number


def brute_force_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest non-mask pixel, the image border being non-mask."""
    padded = np.pad(mask, 1)
    bg = np.argwhere(~padded)
    out = np.zeros(padded.shape)
    for y, x in np.argwhere(padded):
        out[y, x] = np.sqrt(((bg - (y, x)) ** 2).sum(1)).min()
    return out[1:-1, 1:-1]


def test_first_click_is_the_distance_transform_maximum_and_later_clicks_fix_errors():
    rng = np.random.default_rng(0)
    gt = np.zeros((40, 60), bool)
    gt[5:30, 10:50] = True
    gt[20:35, 30:40] = True
    gt &= rng.random(gt.shape) > 0.02  # a few holes
    clicker = Clicker(gt)
    x, y, label = clicker.next_click(np.zeros_like(gt))
    dist = brute_force_distance(gt)
    assert label == 1 and gt[y, x]
    assert dist[y, x] == pytest.approx(dist.max(), abs=1e-3)

    predicted = np.zeros_like(gt)
    predicted[0:12, 0:60] = True  # spills over the top (false positive) and misses the bottom (false negative)
    for _ in range(6):
        x, y, label = clicker.next_click(predicted)
        region = (gt & ~predicted) if label == 1 else (~gt & predicted)
        assert region[y, x], "a click must lie in the error region it corrects"
        predicted = predicted.copy()
        predicted[max(0, y - 3):y + 4, max(0, x - 3):x + 4] = bool(label)  # the segmenter follows the click a bit
    assert len(set(map(tuple, clicker.points))) == len(clicker.points)  # no pixel clicked twice


def test_point_protocol_clicks_lie_in_the_error_regions(dataset):
    image_id = dataset.image_ids[0]

    class Stubborn(BoxFillSegmenter):  # always answers with the same wrong mask
        def clicks(self, points, labels, candidates):
            m = np.zeros((len(points), *self.shape), bool)
            m[:, :, : self.shape[1] // 2] = True
            return m, np.ones(len(points))

    seg = Stubborn()
    seg.set_image(np.zeros((*dataset.size(image_id), 3), np.uint8), image_id)
    rows = point_rows(dataset, seg, image_id, clicks=3)
    anns = {a["id"]: a for a in dataset.annotations(image_id)}
    wrong = np.zeros(dataset.size(image_id), bool)
    wrong[:, : wrong.shape[1] // 2] = True
    for r in rows:
        gt = dataset.gt_mask(anns[r["ann_id"]])
        (x0, y0, l0), *later = r["clicks"]
        assert l0 == 1 and gt[int(y0), int(x0)]  # the first click is inside the object
        for x, y, label in later:
            region = (gt & ~wrong) if label == 1 else (~gt & wrong)
            assert region[int(y), int(x)]
        assert len(r["ious"]) == 3


def test_interrupted_run_resumes_to_the_same_summary(dataset, tmp_path):
    whole = evaluate_coco(dataset, BoxFillSegmenter(), tmp_path / "whole", "box", limit=20, progress=False)

    class Interrupted(BoxFillSegmenter):
        calls = 0

        def set_image(self, image, image_id):
            Interrupted.calls += 1
            if Interrupted.calls == 8:
                raise KeyboardInterrupt
            super().set_image(image, image_id)

    with pytest.raises(KeyboardInterrupt):
        evaluate_coco(dataset, Interrupted(), tmp_path / "cut", "box", limit=20, progress=False)
    log = tmp_path / "cut" / "results.rank0.jsonl"
    with open(log, "a") as f:  # as if killed in the middle of writing an image's rows
        f.write('{"image_id": 12345, "ann_id": 1, "io')
    seen = []

    class Counting(BoxFillSegmenter):
        def set_image(self, image, image_id):
            seen.append(image_id)
            super().set_image(image, image_id)

    resumed = evaluate_coco(dataset, Counting(), tmp_path / "cut", "box", limit=20, progress=False)
    assert len(seen) == 20 - 7  # the 7 finished images were not done again
    assert resumed == whole
    with pytest.raises(InputError, match="different evaluation"):
        evaluate_coco(dataset, BoxFillSegmenter(), tmp_path / "cut", "box", variant="efficientvit", limit=20)


def test_two_process_torchrun_gives_the_same_summary(tmp_path):
    args = ["eval", "coco", "--images", str(IMAGES), "--annotations", str(ANNOTATIONS), "--baseline", "box-fill",
            "--limit", "12"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "swiftsam",
         *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two").glob("results.rank*.jsonl")) == ["results.rank0.jsonl",
                                                                                       "results.rank1.jsonl"]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one == two


def test_eval_with_a_model_through_the_cli(tmp_path, capsys):
    ckpt = tmp_path / "student.pt"
    import torch

    torch.save(randomize_(swiftsam.build("mobilesam"), seed=3).state_dict(), ckpt)
    common = ["eval", "coco", "--images", str(IMAGES), "--annotations", str(ANNOTATIONS), "--checkpoint", str(ckpt),
              "--model", "mobilesam", "--limit", "2", "--engine", "torch"]
    assert main([*common, "--protocol", "point", "--clicks", "2", "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "2 clicks" in printed
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert set(summary["miou_per_click"]) == {"1", "2"}
    assert 0.0 <= summary["miou_per_click"]["2"]["all"]["miou"] <= 1.0
    assert summary["config"]["engine"].startswith("torch")
    assert main([*common, "--variant", "efficientvit", "--out", str(tmp_path / "b")]) == 0
    box = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert box["miou"]["all"]["count"] == box["rows"] > 0


def test_bad_inputs_are_reported(dataset, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(ROOT / "assets" / "snowboard.jpg", other)
    assert main(["eval", "coco", "--images", str(other), "--annotations", str(ANNOTATIONS), "--baseline",
                 "box-fill", "--out", str(tmp_path / "x")]) == 2
    assert "do not match" in capsys.readouterr().err

    partial = tmp_path / "partial"
    partial.mkdir()
    for image_id in dataset.image_ids[:80]:
        shutil.copy(dataset.path(image_id), partial)
    with pytest.raises(InputError, match="6 images of instances_val2017.json are missing") as err:
        CocoImages(partial, ANNOTATIONS)
    assert dataset.coco.imgs[dataset.image_ids[-1]]["file_name"] in str(err.value)

    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 424242, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    with pytest.raises(InputError, match="1 image ids not in the annotation file: 424242"):
        load_detections(dets, dataset)
    dets.write_text(json.dumps([{"image_id": dataset.image_ids[0], "bbox": [0, 0, 5, 5]}]))
    with pytest.raises(InputError, match="lacks category_id, score"):
        load_detections(dets, dataset)
    with pytest.raises(InputError, match="needs --detections"):
        evaluate_coco(dataset, BoxFillSegmenter(), tmp_path / "d", "detections")
    with pytest.raises(InputError, match="only answers box prompts"):
        evaluate_coco(dataset, BoxFillSegmenter(), tmp_path / "p", "point", limit=1, progress=False)
