"""DAVIS J and F (swiftsam/eval/davis.py), the semi-supervised runner (swiftsam/apps/davis.py) and
`swiftsam eval davis`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import swiftsam
from swiftsam.apps.davis import is_video_model, run_davis
from swiftsam.cli import main
from swiftsam.errors import InputError
from swiftsam.eval.davis import boundary, boundary_f, region_j, sequence_scores, tolerance_px
from tests.conftest import SHARED

DAVIS = SHARED / "davis2016"
needs_davis = pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")


def square(h=40, w=50, y0=10, x0=10, side=16) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


# ------------------------------------------------------------------ J and F
def test_identical_masks_score_one():
    m = square()
    assert region_j(m, m) == 1.0 and boundary_f(m, m) == 1.0


def test_disjoint_masks_score_zero():
    a, b = square(x0=2, side=8), square(x0=35, side=8)  # 27 px apart, the tolerance is 1 px here
    assert tolerance_px(a.shape) == 1
    assert region_j(a, b) == 0.0 and boundary_f(a, b) == 0.0


def test_one_pixel_shift_is_within_the_boundary_tolerance():
    a = square()
    b = np.roll(a, 1, axis=1)
    assert region_j(a, b) == pytest.approx(15 * 16 / (17 * 16))  # J sees the shift
    assert boundary_f(a, b) == 1.0  # every boundary pixel has a match within 1 px


def test_shift_beyond_the_tolerance_lowers_f():
    a = square()
    b = np.roll(a, 3, axis=1)  # the left/right edges move 3 px, the top/bottom edges overlap
    f = boundary_f(a, b)
    assert 0.0 < f < 1.0
    # radius 3 at a larger "diagonal": the same shift is matched
    assert boundary_f(a, b, tolerance=3 / np.hypot(*a.shape)) == 1.0


def test_empty_masks():
    gt, empty = square(), np.zeros((40, 50), bool)
    assert region_j(empty, gt) == 0.0 and boundary_f(empty, gt) == 0.0
    assert region_j(gt, empty) == 0.0 and boundary_f(gt, empty) == 0.0
    assert region_j(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0


def test_boundary_is_the_inner_edge_and_not_the_image_edge():
    m = square(h=6, w=6, y0=1, x0=1, side=4)
    b = boundary(m)
    assert b.sum() == 12 and not b[2:4, 2:4].any()  # the 4x4 square's ring, its 2x2 inside is not boundary
    assert not boundary(np.ones((5, 5), bool)).any()  # a full frame has no boundary


def test_tolerance_is_davis_at_davis_size():
    assert tolerance_px((480, 854)) == 8  # round(0.008 * 979.7)


def test_sequence_scores_leave_out_first_and_last_frames():
    s = sequence_scores([1.0, 0.5, 0.7, 0.0], [1.0, 0.2, 0.4, 0.0])
    assert s == pytest.approx({"j": 0.6, "f": 0.3, "jf": 0.45})
    with pytest.raises(InputError, match="at least 3 frames"):
        sequence_scores([1.0, 1.0], [1.0, 1.0])
    with pytest.raises(InputError, match="compare masks of one size"):
        region_j(np.zeros((4, 4)), np.zeros((4, 5)))


# ------------------------------------------------------------------ the runner and the CLI
def write_davis(root, name, frames, masks):
    (root / "JPEGImages" / name).mkdir(parents=True)
    (root / "Annotations" / name).mkdir(parents=True)
    for k, (f, m) in enumerate(zip(frames, masks)):
        Image.fromarray(f).save(root / "JPEGImages" / name / f"{k:05d}.jpg")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "Annotations" / name / f"{k:05d}.png")


def test_sam2_model_tracks_with_memory(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = swiftsam.build("sam2.1-hiera-tiny", input_size=256, depth=(1, 1, 2, 1))
    assert is_video_model(model)
    rng = np.random.default_rng(0)
    frames, masks = [], []
    for k in range(3):
        f = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        m = square(48, 64, 12, 10 + 2 * k, 20)
        f[m] = 220
        frames.append(f)
        masks.append(m)
    write_davis(tmp_path / "davis", "synth", frames, masks)
    out = tmp_path / "out"
    summary = run_davis(model, tmp_path / "davis", out, settings={"model": "tiny-random"})
    assert summary["settings"]["tracker"] == "sam2-memory"
    assert sorted(p.name for p in (out / "synth").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    scores = json.loads((out / "synth" / "scores.json").read_text())
    assert scores["frames"] == 3 and len(scores["per_frame"]) == 3
    written = np.asarray(Image.open(out / "synth" / "00001.png")) > 0
    assert written.shape == (48, 64)
    assert scores["per_frame"][1]["j"] == pytest.approx(region_j(written, masks[1]))
    assert scores["j"] == pytest.approx(scores["per_frame"][1]["j"])  # only frame 1 is scored of 3
    assert summary["jf"] == pytest.approx((scores["j"] + scores["f"]) / 2)
    with pytest.raises(InputError, match="SAM 2 models track video with torch"):
        run_davis(model, tmp_path / "davis", tmp_path / "o2", engine="onnxruntime")


def test_runner_checks_root_and_sequences(tmp_path):
    model = swiftsam.build("nanosam-r18", input_size=256)
    with pytest.raises(InputError, match="does not exist"):
        run_davis(model, tmp_path / "nowhere", tmp_path / "out")
    write_davis(tmp_path / "d", "a", [np.zeros((8, 8, 3), np.uint8)] * 2, [square(8, 8, 2, 2, 3)] * 2)
    with pytest.raises(InputError, match="unknown DAVIS sequence"):
        run_davis(model, tmp_path / "d", tmp_path / "out", sequences=["b"])
    with pytest.raises(InputError, match="needs 3 or more"):
        run_davis(model, tmp_path / "d", tmp_path / "out")
    with pytest.raises(InputError, match="max_frames must be 3 or more"):
        run_davis(model, tmp_path / "d", tmp_path / "out", max_frames=2)


@needs_davis
def test_eval_davis_cli_image_tracker_and_resume(tmp_path, capsys):
    root = tmp_path / "davis"
    for sub in ("JPEGImages", "Annotations"):  # one sequence, to keep the run short
        shutil.copytree(DAVIS / sub / "blackswan", root / sub / "blackswan")
    out = tmp_path / "out"
    args = ["eval", "davis", "--davis", str(root), "--max-frames", "4", "--model", "swiftsam-r18",
            "--input-size", "256", "--out", str(out)]
    assert main(args) == 0
    assert "J&F" in capsys.readouterr().out
    seq = out / "blackswan"
    assert sorted(p.name for p in seq.glob("*.png")) == [f"{k:05d}.png" for k in range(4)]
    scores = json.loads((seq / "scores.json").read_text())
    assert scores["frames"] == 4 and 0.0 <= scores["j"] <= 1.0 and 0.0 <= scores["f"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequences"]["blackswan"]["jf"] == pytest.approx(scores["jf"])
    assert summary["settings"]["tracker"]["image"]["box"] is True
    mtime = (seq / "00001.png").stat().st_mtime_ns
    assert main(args) == 0  # resumed: nothing tracked again
    assert "done before" in capsys.readouterr().out
    assert (seq / "00001.png").stat().st_mtime_ns == mtime
    assert json.loads((out / "summary.json").read_text())["jf"] == pytest.approx(summary["jf"])
    # other settings in the same folder: an error, not mixed results
    assert main(args[:-2] + ["--max-frames", "5", "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["eval", "davis", "--davis", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "davis", "--davis", str(root), "--sequences", "dog", "--out", str(out)]) == 2
    assert "unknown DAVIS sequence(s) dog" in capsys.readouterr().err
    assert main(["eval", "davis", "--davis", str(root), "--max-frames", "2", "--out", str(out)]) == 2
    assert main(["eval", "davis", "--davis", str(root), "--sequences", ",", "--out", str(out)]) == 2
    assert "names no sequence" in capsys.readouterr().err
