"""The point protocol (issue 17): the RITM clicker on hand-made cases whose answer is known, and how later
clicks reach the model (accumulated clicks, previous low-res logits as mask input, single-mask output)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import swiftsam
from swiftsam.cli import main
from swiftsam.errors import InputError
from swiftsam.eval import Clicker, CocoImages, PredictorSegmenter, evaluate_coco
from swiftsam.eval.coco import point_rows
from tests.conftest import SHARED


def interior_distance(region: np.ndarray, y: int, x: int) -> float:
    """Euclidean distance from (y, x) to the nearest pixel outside ``region`` (the image border counts)."""
    outside = np.argwhere(~np.pad(region, 1)) - 1
    return float(np.sqrt(((outside - (y, x)) ** 2).sum(1)).min())


def deepest(region: np.ndarray) -> float:
    """The largest :func:`interior_distance` over the region's pixels (0 for an empty region), by brute force."""
    inside = np.argwhere(region)
    outside = np.argwhere(~np.pad(region, 1)) - 1
    best = 0.0
    for start in range(0, len(inside), 256):
        d = ((inside[start:start + 256, None, :] - outside[None]) ** 2).sum(-1).min(1)
        best = max(best, float(np.sqrt(d.max())))
    return best


# ------------------------------------------------------------------ the clicker, by hand
def square_case():
    """A 41 x 62 object; the prediction covers its left 21 columns and a 15 x 15 blob outside it."""
    gt = np.zeros((100, 100), bool)
    gt[10:51, 10:72] = True
    predicted = np.zeros_like(gt)
    predicted[10:51, 10:31] = True  # the left part: the missed part is the 41 x 41 square rows 10..50, cols 31..71
    predicted[70:85, 10:25] = True  # a false-positive blob, centre (x 17, y 77)
    return gt, predicted


def test_click_goes_to_the_centre_of_the_larger_missed_region_and_is_positive():
    gt, predicted = square_case()
    clicker = Clicker(gt)
    assert clicker.next_click(np.zeros_like(gt)) == (30, 30, 1)  # the first click: 21 px deep, first in row-major
    x, y, label = clicker.next_click(predicted)
    assert label == 1
    assert (x, y) == (51, 30)  # the one most interior pixel of the 41 x 41 missed square: 21 px from its boundary
    fn = gt & ~predicted
    assert fn[y, x] and interior_distance(fn, y, x) == pytest.approx(21.0)
    assert clicker.points[-1] == (51.0, 30.0) and clicker.labels[-1] == 1


def test_click_goes_to_the_centre_of_the_larger_false_positive_region_and_is_negative():
    gt = np.zeros((100, 100), bool)
    gt[10:51, 10:72] = True
    predicted = gt.copy()
    predicted[25:36, 40:51] = False  # an 11 x 11 hole: missed, 6 px deep
    predicted[60:91, 40:71] = True  # a 31 x 31 blob outside the object: 16 px deep, centre (x 55, y 75)
    clicker = Clicker(gt)
    x, y, label = clicker.next_click(predicted)
    assert label == 0 and (x, y) == (55, 75)
    assert interior_distance(predicted & ~gt, y, x) == pytest.approx(16.0)


def test_the_larger_region_is_the_deeper_one_not_the_one_with_more_pixels():
    """RITM's rule: the region whose most interior pixel is farthest from its boundary wins, so a long thin
    miss (more pixels) loses to a compact false positive (fewer pixels, deeper)."""
    gt = np.zeros((120, 120), bool)
    gt[5:10, 5:115] = True  # a 5 x 110 strip, all missed: 550 pixels, 3 px deep
    predicted = np.zeros_like(gt)
    predicted[40:61, 40:61] = True  # a 21 x 21 false positive: 441 pixels, 11 px deep, centre (50, 50)
    x, y, label = Clicker(gt).next_click(predicted)
    assert label == 0 and (x, y) == (50, 50)


def test_each_click_lands_in_the_deepest_error_pixel_over_several_rounds():
    rng = np.random.default_rng(1)
    gt, predicted = square_case()
    clicker = Clicker(gt)
    for _ in range(5):
        x, y, label = clicker.next_click(predicted)
        fn, fp = gt & ~predicted, predicted & ~gt
        depth = {1: deepest(fn), 0: deepest(fp)}
        region = fn if label == 1 else fp
        assert region[y, x]
        assert depth[label] >= depth[1 - label]  # the deeper region, the right label
        assert interior_distance(region, y, x) == pytest.approx(depth[label], abs=1e-3)  # its most interior pixel
        predicted = predicted.copy()  # the segmenter fixes a random patch around the click
        r = int(rng.integers(2, 6))
        predicted[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = bool(label)
    assert len(set(clicker.points)) == len(clicker.points)


# ------------------------------------------------------------------ how later clicks reach the model
class Recorder:
    """A segmenter that records each call and answers with the prediction of ``square_case`` and made-up
    logits, so that the protocol's calls can be checked."""

    def __init__(self, with_logits: bool = True) -> None:
        self.calls: list[dict] = []
        self.with_logits = with_logits

    def clicks(self, points, labels, candidates, **kwargs):
        self.calls.append({"points": points.copy(), "labels": labels.copy(), "candidates": candidates, **kwargs})
        _, predicted = square_case()
        masks = np.repeat(predicted[None], len(points), 0)
        logits = np.full((len(points), 1, 256, 256), float(len(self.calls)), np.float32)
        answer = (masks, np.ones(len(points), np.float32))
        return (*answer, logits) if self.with_logits else answer


class OneObject:
    """A dataset of one image with the object of ``square_case``."""

    def annotations(self, image_id):
        return [{"id": 7, "category_id": 1, "area": float(square_case()[0].sum())}]

    def gt_mask(self, ann):
        return square_case()[0]


def test_sam_variant_feeds_back_the_previous_logits_and_takes_the_single_mask_output():
    seg = Recorder()
    rows = point_rows(OneObject(), seg, 1, clicks=3, variant="sam")
    first, second, third = seg.calls
    assert first["candidates"] == "multimask" and "mask_input" not in first  # a lone click: best of 3, no mask
    for k, call in ((2, second), (3, third)):
        assert call["candidates"] == "single"
        assert call["mask_input"].shape == (1, 1, 256, 256)
        assert np.all(call["mask_input"] == k - 1)  # the logits of the answer just before
        assert call["points"].shape == (1, k, 2) and call["labels"].shape == (1, k)  # every click so far
    # the clicks accumulate in image pixels (x, y): the first inside the object, 21 px deep, the second at the
    # centre of the square that square_case's prediction misses, positive
    assert third["points"][0, :2].tolist() == [[30.0, 30.0], [51.0, 30.0]]
    assert third["labels"][0, :2].tolist() == [1, 1]
    assert rows[0]["clicks"][:2] == [[30.0, 30.0, 1], [51.0, 30.0, 1]] and len(rows[0]["ious"]) == 3


def test_efficientvit_variant_gives_no_mask_input_and_the_best_of_three_at_every_click():
    seg = Recorder()
    point_rows(OneObject(), seg, 1, clicks=3, variant="efficientvit")
    assert [c["candidates"] for c in seg.calls] == ["multimask"] * 3
    assert all("mask_input" not in c for c in seg.calls)


def test_a_segmenter_without_logits_gets_no_mask_input():
    seg = Recorder(with_logits=False)
    point_rows(OneObject(), seg, 1, clicks=2, variant="sam")
    assert "mask_input" not in seg.calls[1] and seg.calls[1]["candidates"] == "single"


@pytest.fixture(scope="module")
def predictor():
    p = swiftsam.Predictor(swiftsam.load("swiftsam-r18"))
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    return p


def test_predictor_segmenter_passes_mask_input_and_returns_the_chosen_logits(predictor):
    seg = PredictorSegmenter(predictor)
    points = np.array([[[40.0, 30.0]], [[100.0, 80.0]], [[20.0, 100.0]]])
    labels = np.ones((3, 1), np.int64)
    masks, scores, logits = seg.clicks(points, labels, "multimask", chunk=2)
    assert masks.shape == (3, 120, 160) and scores.shape == (3,) and logits.shape == (3, 1, 256, 256)
    for i in range(3):
        m, s, low = predictor.predict(points[i], labels[i], multimask_output=True)
        best = int(s.argmax())
        assert (masks[i] == m[best]).mean() > 0.999 and scores[i] == pytest.approx(s[best], abs=1e-4)
        assert np.allclose(logits[i, 0], low[best], atol=1e-3)  # (batches of 2 vs 1: float noise)
    points2 = np.concatenate([points, points[:, :1] + 5], 1)
    labels2 = np.concatenate([labels, np.zeros((3, 1), np.int64)], 1)
    masks2, scores2, logits2 = seg.clicks(points2, labels2, "single", mask_input=logits, chunk=2)
    for i in range(3):
        m, s, low = predictor.predict(points2[i], labels2[i], mask_input=logits[i], multimask_output=False)
        assert (masks2[i] == m[0]).mean() > 0.999 and np.allclose(logits2[i, 0], low[0], atol=1e-3)
    assert not np.allclose(seg.clicks(points2, labels2, "single")[2], logits2, atol=1e-2)  # the mask input counts
    with pytest.raises(InputError, match="candidates"):
        seg.clicks(points, labels, "best")


COCO = SHARED / "coco-mini"
ANNOTATIONS = COCO / "annotations" / "instances_val2017.json"


@pytest.mark.skipif(not ANNOTATIONS.exists(), reason="needs ../shared/data/coco-mini")
def test_point_variant_is_checked_and_recorded(tmp_path, capsys):
    common = ["eval", "coco", "--images", str(COCO / "val2017"), "--annotations", str(ANNOTATIONS),
              "--baseline", "oracle", "--protocol", "point", "--clicks", "2", "--limit", "1"]
    assert main([*common, "--variant", "nanosam", "--out", str(tmp_path / "bad")]) == 2
    assert "point protocol's --variant must be one of sam, efficientvit" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["config"]["variant"] == "sam"
    assert "coco point (sam)" in capsys.readouterr().out
    dataset = CocoImages(COCO / "val2017", ANNOTATIONS)
    with pytest.raises(InputError, match="box protocol's --variant"):
        evaluate_coco(dataset, None, tmp_path / "b", "box", variant="sam", progress=False)
