"""Applications (swiftsam/apps): detections / keypoints -> COCO instance masks (`swiftsam label`), detector
adapters, and the image-only tracker (`swiftsam track`)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from swiftsam.apps.detections import Detections, image_ids, load_detections
from swiftsam.apps.detectors import HaarDetector, get_detector
from swiftsam.apps.keypoints import PersonPrompt, keypoint_box, load_keypoints, person_prompts, to_people
from swiftsam.apps.label import box_prompts, keypoint_prompts, label_images, progress_path, summary_path
from swiftsam.apps.tracker import Frame, Tracker, TrackerConfig, interior_point, mask_box, write_track
from swiftsam.cli import main
from swiftsam.errors import InputError
from swiftsam.masks import decode_rle, rle_bbox
from swiftsam.optional import MissingDependencyError
from tests.conftest import SHARED

PERSONS = SHARED / "coco-persons"
PERSON_KP = PERSONS / "annotations" / "person_keypoints_val2017.json"
DAVIS = SHARED / "davis2016"
needs_persons = pytest.mark.skipif(not PERSON_KP.exists(), reason="needs ../shared/data/coco-persons")


def kp(points: dict[int, tuple[float, float, int]]) -> np.ndarray:
    """17 x 3 keypoints with the given (index: x, y, v), the rest unlabelled."""
    a = np.zeros((17, 3))
    for i, v in points.items():
        a[i] = v
    return a


def record(points: dict[int, tuple[float, float, int]], **extra) -> dict:
    """A COCO person record with those keypoints."""
    return {"image_id": 1, "keypoints": kp(points).ravel().tolist(), **extra}


@pytest.fixture(scope="module")
def predictor():
    from swiftsam import Predictor

    return Predictor("swiftsam-r18", engine="torch")


@pytest.fixture(scope="module")
def persons(tmp_path_factory):
    """Two coco-persons images (their ground-truth keypoints as a pose estimator's output) in a folder."""
    if not PERSON_KP.exists():
        pytest.skip("needs ../shared/data/coco-persons")
    folder = tmp_path_factory.mktemp("persons")
    coco = json.loads(PERSON_KP.read_text())
    images = sorted(coco["images"], key=lambda im: im["height"] * im["width"])[:2]  # the smallest: fast
    for im in images:
        shutil.copy(PERSONS / "val2017" / im["file_name"], folder / im["file_name"])
    ids = {im["id"] for im in images}
    anns = [a for a in coco["annotations"] if a["image_id"] in ids]
    return folder, images, anns


# ------------------------------------------------------------------ keypoints -> prompts
def test_person_prompt_is_visible_keypoints_and_their_grown_box():
    p = to_people([record({0: (50, 20, 2), 11: (40, 80, 1), 15: (60, 110, 2)})])
    kept, points, labels, boxes, skipped = person_prompts(p, (200, 100), PersonPrompt(1, True, 0.1, points=True))
    assert kept == [0] and not skipped
    assert points.shape == (1, 3, 2) and labels.tolist() == [[1, 1, 1]]
    # keypoints span x 40..60, y 20..110: margins max(4, 10% of the size) = 4 px and 9 px
    np.testing.assert_allclose(boxes[0], [36, 11, 64, 119])
    kept, points, labels, boxes, _ = person_prompts(p, (200, 100), PersonPrompt(2, box=False, points=True))
    assert points.shape == (1, 2, 2) and boxes is None  # v=1 (labelled, not visible) left out
    # the default (best on coco-persons for the bundled model): the keypoints' box alone
    kept, points, labels, boxes, _ = person_prompts(p, (200, 100))
    assert points is None and labels is None and boxes.shape == (1, 4)
    with pytest.raises(InputError, match="needs the keypoints' box or the keypoints as points"):
        person_prompts(p, (200, 100), PersonPrompt(box=False))


def test_other_people_become_background_points_and_short_prompts_are_padded():
    a = kp({0: (10, 10, 2), 5: (12, 30, 2)})
    b = kp({0: (80, 10, 2)})
    people = to_people([{"image_id": 1, "keypoints": a.ravel().tolist()},
                        {"image_id": 1, "keypoints": b.ravel().tolist()}])
    _, points, labels, _, _ = person_prompts(people, (100, 100), PersonPrompt(background=True, points=True))
    assert labels.tolist() == [[1, 1, 0], [1, 0, 0]]
    np.testing.assert_allclose(points[0, 2], [80, 10])
    _, points, labels, _, _ = person_prompts(people, (100, 100), PersonPrompt(background=False, points=True))
    assert labels.tolist() == [[1, 1], [1, -1]]  # -1: padding, not a point
    _, points, labels, boxes, _ = person_prompts(people, (100, 100), PersonPrompt(background=True))
    assert labels.tolist() == [[0, -1], [0, 0]] and boxes.shape == (2, 4)  # the box + other people only


def test_part_prompt_takes_the_parts_keypoints_as_foreground_and_the_rest_as_background():
    people = to_people([record({0: (50, 10, 2), 5: (40, 30, 2), 6: (60, 30, 2), 11: (42, 60, 2), 12: (58, 60, 2),
                                15: (45, 95, 2)})])
    _, points, labels, boxes, _ = person_prompts(people, (100, 100), part="torso")
    assert boxes is None
    fg = points[0][labels[0] == 1].tolist()
    bg = points[0][labels[0] == 0].tolist()
    assert sorted(fg) == sorted([[40, 30], [60, 30], [42, 60], [58, 60]])
    assert sorted(bg) == sorted([[50, 10], [45, 95]])
    with pytest.raises(InputError, match="--part must be one of"):
        person_prompts(people, (100, 100), part="tail")


def test_people_without_keypoints_are_skipped_and_far_keypoints_dropped():
    people = to_people([
        {"image_id": 1, "id": 7, "keypoints": [0] * 51},
        record({0: (100.5, 10, 2), 1: (130, 10, 2), 2: (50, 50, 2)}, id=8),
    ])
    prompts = keypoint_prompts(people, (100, 100), PersonPrompt(points=True))
    assert len(prompts) == 1 and prompts.extra == [{"ann_id": 8}]
    reasons = {s["what"]: s["reason"] for s in prompts.skipped}
    assert "no keypoint" in reasons["person 7"]
    assert "1 keypoint(s) more than 1 px outside" in reasons["person 8"]
    assert prompts.points[0][prompts.labels[0] == 1].tolist() == [[100, 10], [50, 50]]  # 0.5 px out: clipped


def test_keypoint_box_stays_in_the_image():
    np.testing.assert_allclose(keypoint_box(np.array([[1.0, 1.0], [99.0, 49.0]]), 0.2, (50, 100)), [0, 0, 100, 50])


@pytest.mark.parametrize("content, match", [
    ("{not json", "cannot read keypoints"),
    ('{"images": []}', "must be a COCO keypoints JSON"),
    ('[{"image_id": 1}]', "person 0 .* lacks keypoints"),
    ('[{"image_id": 1, "keypoints": [1, 2, 3]}]', "51 numbers"),
    ('[{"image_id": 1, "keypoints": ' + json.dumps([1] * 50 + ["x"]) + "}]", "keypoints must be 51 numbers"),
])
def test_bad_keypoint_files_are_clear_errors(tmp_path, content, match):
    f = tmp_path / "kp.json"
    f.write_text(content)
    with pytest.raises(InputError, match=match):
        load_keypoints(f)
    with pytest.raises(InputError, match="not found"):
        load_keypoints(tmp_path / "missing.json")


# ------------------------------------------------------------------ detections
def _image(path, w=64, h=48):
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


def test_image_ids_from_annotations_numeric_names_or_positions(tmp_path):
    a, b = _image(tmp_path / "000000000139.jpg"), _image(tmp_path / "000000000285.jpg")
    assert image_ids([a, b]) == {a.name: 139, b.name: 285}
    c = _image(tmp_path / "cat.jpg")
    assert image_ids([a, c]) == {a.name: 0, c.name: 1}
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps({"images": [{"id": 5, "file_name": "sub/cat.jpg"}]}))
    assert image_ids([c], ann) == {"cat.jpg": 5}
    with pytest.raises(InputError, match="1 image.* are not in"):
        image_ids([a], ann)


def test_coco_and_yolo_detections_with_threshold_and_class_filter(tmp_path):
    im = _image(tmp_path / "000000000007.jpg", w=100, h=50)
    res = tmp_path / "dets.json"
    res.write_text(json.dumps([{"image_id": 7, "bbox": [10, 5, 20, 10], "score": 0.9, "category_id": 1},
                               {"image_id": 7, "bbox": [0, 0, 5, 5], "score": 0.2, "category_id": 3}]))
    d = load_detections(res, [im], {im.name: 7})[im.name]
    np.testing.assert_allclose(d.boxes[0], [10, 5, 30, 15])
    assert len(d.filtered(0.5)) == 1 and d.filtered(classes={3}).category_ids.tolist() == [3]
    yolo = tmp_path / "labels"
    yolo.mkdir()
    (yolo / "000000000007.txt").write_text("2 0.5 0.5 0.2 0.4 0.8\n\n0 0.1 0.1 0.2 0.2\n")
    d = load_detections(yolo, [im], {im.name: 7})[im.name]
    np.testing.assert_allclose(d.boxes, [[40, 15, 60, 35], [0, 0, 20, 10]])
    assert d.scores.tolist() == [0.8, 1.0] and d.category_ids.tolist() == [2, 0]


@pytest.mark.parametrize("content, match", [
    ("[{]", "cannot read detections"),
    ('{"a": 1}', "must be a COCO results list"),
    ('[{"image_id": 7}]', "detection 0 .* lacks bbox"),
    ('[{"image_id": 7, "bbox": [1, 2, 3]}]', r"bbox must be \[x, y, w, h\]"),
    ('[{"image_id": 7, "bbox": [1, 2, 3, "x"]}]', "must be a number"),
    ('[{"image_id": 7, "bbox": [1, 2, 3, 4], "score": NaN}]', "finite"),
    ('[{"image_id": 99, "bbox": [1, 2, 3, 4]}]', "none of the image ids"),
])
def test_bad_detection_files_are_clear_errors(tmp_path, content, match):
    im = _image(tmp_path / "000000000007.jpg")
    f = tmp_path / "d.json"
    f.write_text(content)
    with pytest.raises(InputError, match=match):
        load_detections(f, [im], {im.name: 7})


def test_bad_yolo_lines_are_clear_errors(tmp_path):
    im = _image(tmp_path / "a.jpg")
    folder = tmp_path / "y"
    folder.mkdir()
    (folder / "a.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(InputError, match=r"a.txt:1: a YOLO line is"):
        load_detections(folder, [im], {im.name: 0})
    (folder / "a.txt").write_text("1.5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InputError, match="class must be a non-negative integer"):
        load_detections(folder, [im], {im.name: 0})


def test_boxes_within_a_pixel_are_clipped_others_skipped_and_reported():
    dets = Detections(np.array([[-0.5, 0, 20, 20], [10, 10, 70, 20], [5, 5, 15, 15]]), np.array([0.9, 0.8, 0.7]),
                      np.array([1, 2, 3]))
    p = box_prompts(dets, (48, 64))
    assert p.clipped == 1 and len(p) == 2 and p.category_ids.tolist() == [1, 3]
    np.testing.assert_allclose(p.boxes[0], [0, 0, 20, 20])
    assert len(p.skipped) == 1 and "6.00 px outside" in p.skipped[0]["reason"]


# ------------------------------------------------------------------ detectors
def test_haar_detector_runs_offline_or_says_what_to_install(monkeypatch):
    cv2 = pytest.importorskip("cv2")
    if hasattr(cv2, "CascadeClassifier"):  # OpenCV 4
        d = HaarDetector("haar-face")
        out = d.detect(np.full((120, 160, 3), 90, np.uint8))
        assert isinstance(out, Detections) and len(out) == 0  # a flat image has no face
        assert get_detector("haar-fullbody").name == "haar-fullbody"
        monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(MissingDependencyError, match="opencv-python-headless<5"):  # OpenCV 5 ships no cascades
        get_detector("haar-fullbody")


def test_detector_adapters_say_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="YOLO weights not found"):
        get_detector("yolo:" + str(tmp_path / "nope.pt"))
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match="pip install ultralytics"):
        get_detector(f"yolo:{weights}")
    with pytest.raises(MissingDependencyError, match="pip install transformers"):
        get_detector("owlvit:google/owlvit-base-patch32", texts=["a person"])
    with pytest.raises(InputError, match="--text"):
        get_detector("grounding-dino:IDEA-Research/grounding-dino-tiny")
    with pytest.raises(InputError, match="unknown detector"):
        get_detector("haar-cat")


# ------------------------------------------------------------------ label_images (the real model)
def _keypoint_run(predictor, folder, anns, out, **kw):
    images = sorted(folder.iterdir())
    ids = image_ids(images)
    people = {}
    for a in anns:
        people.setdefault(a["image_id"], []).append(a)
    calls = []

    def prompts_for(path, array):
        calls.append(path.name)
        return keypoint_prompts(to_people(people.get(ids[path.name], [])), array.shape[:2])

    summary = label_images(predictor, images, ids, prompts_for, out, {"test": 1}, candidates="multimask",
                           progress=False, **kw)
    return summary, calls


@needs_persons
def test_label_keypoints_gives_coco_results_and_resumes(predictor, persons, tmp_path):
    folder, images, anns = persons
    out = tmp_path / "res.json"
    summary, calls = _keypoint_run(predictor, folder, anns, out)
    assert summary["done"] == 2 and summary["results"] == 2 and not summary["failed"]
    results = json.loads(out.read_text())
    ann_ids = {a["id"] for a in anns}
    for r in results:
        mask = decode_rle(r["segmentation"])
        assert mask.any() and r["bbox"] == rle_bbox(r["segmentation"])
        assert 0 < r["score"] <= 1 and r["ann_id"] in ann_ids and r["category_id"] == 1
    assert json.loads(summary_path(out).read_text())["results"] == 2
    # a second run finds every image in the progress log: nothing is decoded again, same results
    summary2, calls2 = _keypoint_run(predictor, folder, anns, out)
    assert calls2 == [] and summary2["resumed"] == 2 and json.loads(out.read_text()) == results
    # an interrupted run (torn last line) redoes only the image whose line was torn
    log = progress_path(out)
    log.write_bytes(log.read_bytes()[:-20])
    summary3, calls3 = _keypoint_run(predictor, folder, anns, out)
    assert len(calls3) == 1 and summary3["resumed"] == 1 and json.loads(out.read_text()) == results
    with pytest.raises(InputError, match="other settings"):
        label_images(predictor, sorted(folder.iterdir()), image_ids(sorted(folder.iterdir())), lambda p, a: None, out,
                     {"test": 2}, progress=False)


def test_label_skips_and_reports_bad_images(predictor, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = _image(folder / "1.png", 96, 64)
    (folder / "2.png").write_bytes(b"not a png")
    dets = {"1.png": Detections(np.array([[10.0, 10, 50, 40], [200, 0, 300, 10]]), np.array([0.5, 1.0]),
                                np.array([1, 1])), "2.png": Detections()}
    out = tmp_path / "r.json"
    summary = label_images(predictor, sorted(folder.iterdir()), {"1.png": 1, "2.png": 2},
                           lambda p, a: box_prompts(dets[p.name], a.shape[:2]), out, {}, progress=False)
    assert summary["done"] == 1 and [f["image"] for f in summary["failed"]] == ["2.png"]
    assert any("outside" in s["reason"] for s in summary["skipped"])
    results = json.loads(out.read_text())
    assert all(r["score"] <= 0.5 for r in results)  # predicted IoU x the detection's score
    for names, match in ((["1.png", "2.png"], "1.png: detection 1 box .* outside"), (["2.png"], "2.png: ")):
        with pytest.raises(InputError, match=match):  # --strict: the first bad item or image stops the run
            label_images(predictor, [folder / n for n in names], {"1.png": 1, "2.png": 2},
                         lambda p, a: box_prompts(dets[p.name], a.shape[:2]), tmp_path / f"s{len(names)}.json", {},
                         progress=False, strict=True)
    assert good.exists()


@needs_persons
def test_label_cli_keypoints_and_detections(persons, tmp_path, capsys):
    folder, images, anns = persons
    kpf = tmp_path / "kp.json"
    kpf.write_text(json.dumps([{"image_id": a["image_id"], "keypoints": a["keypoints"], "score": 0.9} for a in anns]))
    out = tmp_path / "out.json"
    assert main(["label", str(folder), "--keypoints", str(kpf), "--out", str(out), "--no-progress"]) == 0
    assert len(json.loads(out.read_text())) == 2
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0, "category_id": 1}
                                for a in anns]))
    out2 = tmp_path / "out2.json"
    assert main(["label", str(folder), "--detections", str(dets), "--annotations", str(PERSON_KP), "--evaluate",
                 "--out", str(out2), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 masks on 2 image(s)" in printed and "mask AP" in printed
    # bad inputs: exit 2 with the reason
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1}]')
    assert main(["label", str(folder), "--detections", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert "lacks bbox" in capsys.readouterr().err
    assert main(["label", str(folder), "--detections", str(dets), "--part", "torso",
                 "--out", str(tmp_path / "y.json")]) == 2
    assert "--part" in capsys.readouterr().err


# ------------------------------------------------------------------ tracker
def test_interior_point_is_deep_inside():
    m = np.zeros((60, 100), bool)
    m[10:50, 10:30] = True  # a thick block ...
    m[28:32, 30:95] = True  # ... with a long thin arm: the centroid is near the arm, the interior point is not
    x, y = interior_point(m)
    assert 15 <= x <= 25 and 22 <= y <= 38 and m[int(y), int(x)]
    assert interior_point(np.zeros((5, 5), bool)) is None
    np.testing.assert_allclose(mask_box(m), [10, 10, 95, 50])


class _FakePredictor:
    """predict_best's answer: the square the test says (a stand-in for a model, to test loss and re-acquisition)."""

    def __init__(self, answers):
        self.answers, self.boxes = list(answers), []
        self.original_size = (100, 100)

    def set_image(self, image):
        pass

    def predict_best(self, points, labels, boxes, candidates, mask_input=None, return_low_res=False):
        self.boxes.append(None if boxes is None else boxes[0].tolist())
        x0, y0, x1, y1, score = self.answers.pop(0)
        m = np.zeros((1, 100, 100), bool)
        m[0, y0:y1, x0:x1] = True
        return m, np.array([score]), np.zeros((1, 1, 256, 256))


def test_tracker_detects_a_loss_and_reacquires():
    fake = _FakePredictor([(10, 10, 30, 30, 0.9),  # start
                           (12, 10, 32, 30, 0.9),  # follows
                           (0, 0, 100, 100, 0.9),  # area jumps 25x: lost
                           (14, 10, 34, 30, 0.05),  # low score: still lost
                           (14, 10, 34, 30, 0.9)])  # found again
    tracker = Tracker(fake, TrackerConfig(min_score=0.1, max_area_change=4.0, box_margin=0.1, search_margin=0.5))
    frames = list(tracker.track([np.zeros((100, 100, 3), np.uint8)] * 5, box=[10, 10, 30, 30]))
    assert [f.lost for f in frames] == [False, False, True, True, False]
    assert "area changed" in frames[2].reason and "predicted IoU" in frames[3].reason and not frames[2].mask.any()
    # after the loss, prompts come from the last good mask (12..32) with the wider search margin
    assert fake.boxes[3] == [2.0, 0.0, 42.0, 40.0] and fake.boxes[2] == [10.0, 8.0, 34.0, 32.0]


def test_tracker_needs_a_start_and_a_non_empty_mask(predictor):
    t = Tracker(predictor)
    with pytest.raises(InputError, match="start"):
        t.step(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="empty"):
        t.start(np.zeros((32, 32, 3), np.uint8), mask=np.zeros((32, 32), bool))
    with pytest.raises(InputError, match="the first mask is 16x16"):
        t.start(np.zeros((32, 32, 3), np.uint8), mask=np.ones((16, 16), bool))


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_track_cli_on_davis_frames(tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted((DAVIS / "JPEGImages" / "blackswan").glob("*.jpg"))[:3]:
        shutil.copy(f, frames / f.name)
    out = tmp_path / "track"
    gt = DAVIS / "Annotations" / "blackswan" / "00000.png"
    # the image-only tracker (swiftsam track's default is the video model, whose frame 0 is the mask resized)
    assert main(["track", str(frames), "--mask", str(gt), "--out", str(out), "--model", "swiftsam-r18"]) == 0
    summary = json.loads((out / "track.json").read_text())
    assert summary["frames"] == 3
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    first = np.asarray(Image.open(out / "00000.png")) > 0
    assert (first == (np.asarray(Image.open(gt).convert("L")) > 0)).all()  # the given mask is frame 0's result
    assert main(["track", str(frames), "--box", "0,0,5000,10", "--out", str(tmp_path / "t2")]) == 2
    assert "box outside" in capsys.readouterr().err
    assert main(["track", str(tmp_path / "nothing.mp4"), "--box", "0,0,5,5", "--out", str(tmp_path / "t3")]) == 2


def test_write_track_writes_masks_and_summary(tmp_path):
    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True
    s = write_track([Frame(m, 0.8, [1, 1, 4, 3], False), Frame(np.zeros_like(m), 0.1, None, True, "x")], tmp_path)
    assert s["lost"] == 1 and (np.asarray(Image.open(tmp_path / "00000.png")) == m * 255).all()
