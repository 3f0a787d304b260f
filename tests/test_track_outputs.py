"""`swiftsam track`'s prompts and outputs (apps.video_track): several objects, prompts on later frames
(corrections, objects added mid-video), label PNGs = the RLE JSON, the overlay mp4, resume after a kill, and clear
errors for bad prompt syntax."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
import swiftsam.cli.track as track_cli
from swiftsam.apps import video_track
from swiftsam.apps.video_track import parse_prompt
from swiftsam.cli import main
from swiftsam.errors import InputError
from swiftsam.masks import decode_rle
from swiftsam.video import VideoPredictor

from .conftest import randomize_

N, H, W = 5, 64, 96
BOX1, BOX2 = [8, 10, 40, 44], [50, 20, 90, 56]


def _frames(n=N):
    frames = []
    for k in range(n):
        im = np.full((H, W, 3), 30, np.uint8)
        im[10:44, 8 + 2 * k:40 + 2 * k] = (230, 60, 60)  # object 1 moving right
        im[20:56, 50:90 - k] = (60, 200, 80)  # object 2 shrinking
        frames.append(im)
    return frames


@pytest.fixture(scope="module")
def sam2_model():
    torch.manual_seed(0)
    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=128, depth=(1, 1, 1, 1)), seed=2).eval()
    model.zoo_name = "sam2.1-hiera-tiny"
    return model


@pytest.fixture
def video(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, im in enumerate(_frames()):
        Image.fromarray(im).save(folder / f"{k:05d}.png")
    return folder


def _track(monkeypatch, model, video, out, *prompts, extra=()):
    monkeypatch.setattr(track_cli, "load_model", lambda args, name: model)  # a tiny random model, no checkpoint
    return main(["track", str(video), *prompts, "--out", str(out), "--no-progress", "--device", "cpu", *extra])


def _labels(out, n=N):
    return [np.asarray(Image.open(out / f"{k:05d}.png")) for k in range(n)]


def test_two_objects_a_new_object_and_a_correction_with_memory(monkeypatch, sam2_model, video, tmp_path, capsys):
    out = tmp_path / "out"
    code = _track(monkeypatch, sam2_model, video, out, "--box", ",".join(map(str, BOX1)),
                  "--box", ",".join(map(str, BOX2)) + "@2#2", "--point", "30,20,0@3#1", extra=["--overlay"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "track.json").read_text())
    assert summary["frames"] == N and summary["objects"] == [1, 2]

    # the interactive flow of sam2's predictor: track to frame 2, add object 2 there, track to frame 3, correct
    # object 1 there with its memory, track on (corrections become conditioning frames)
    vp = VideoPredictor(sam2_model, non_overlap_masks=True, add_all_frames_to_correct_as_cond=True)
    state = vp.init_state(_frames())
    vp.add_new_points_or_box(state, 0, 1, box=np.array(BOX1, np.float32))
    want = {}
    for start, stop, prompt in ((0, 2, lambda: vp.add_new_points_or_box(state, 2, 2, box=np.array(BOX2, np.float32))),
                                (2, 3, lambda: vp.add_new_points_or_box(state, 3, 1, points=np.array([[30, 20]]),
                                                                        labels=np.array([0]))),
                                (3, None, None)):
        for f, ids, logits in vp.propagate_in_video(state, start_frame_idx=start):
            if f == stop:
                prompt()
                break
            want[f] = {i: (lg[0] > 0).numpy() for i, lg in zip(ids, logits)}
    labels = _labels(out)
    for k, row in enumerate(summary["per_frame"]):
        assert sorted(row["objects"]) == (["1"] if k < 2 else ["1", "2"])  # object 2 appears on frame 2
        assert set(np.unique(labels[k])) <= {0, 1, 2}
        for obj, rec in row["objects"].items():
            m = decode_rle(rec["rle"])
            assert np.array_equal(m, labels[k] == int(obj))  # the RLE JSON is the label PNG
            assert np.array_equal(m, want[k][int(obj)]), (k, obj)
            assert rec["area"] == m.sum() and rec["lost"] == (not m.any())
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == N and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == W


def test_resume_after_a_kill_does_not_redo_written_frames(monkeypatch, sam2_model, video, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = ["--box", ",".join(map(str, BOX1)), "--box", ",".join(map(str, BOX2)) + "#2"]
    real_write = video_track.TrackWriter.write

    def killed_at_3(self, frame, results, hw):
        if frame == 3:
            raise KeyboardInterrupt  # the process is killed while frame 3 is tracked
        real_write(self, frame, results, hw)

    monkeypatch.setattr(video_track.TrackWriter, "write", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        _track(monkeypatch, sam2_model, video, out, *prompts, extra=["--no-overlay"])
    monkeypatch.setattr(video_track.TrackWriter, "write", real_write)
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert not (out / "track.json").exists()
    with open(out / "track.jsonl", "a") as f:
        f.write('{"frame": 3, "objects": {"1": {"rle"')  # a line cut by the kill
    written = {k: (out / f"{k:05d}.png").stat().st_mtime_ns for k in range(3)}

    reads = []
    real_load = video_track.load_image
    monkeypatch.setattr(video_track, "load_image", lambda p: reads.append(int(p.stem)) or real_load(p))
    assert _track(monkeypatch, sam2_model, video, out, *prompts, extra=["--no-overlay"]) == 0, capsys.readouterr().err
    assert "resumed at frame 3" in capsys.readouterr().out
    assert 1 not in reads and {3, 4} <= set(reads)  # frame 2: the masks it resumes from; 0: the state's start
    assert {k: (out / f"{k:05d}.png").stat().st_mtime_ns for k in range(3)} == written  # not written again
    summary = json.loads((out / "track.json").read_text())
    assert [r["frame"] for r in summary["per_frame"]] == list(range(N)) and summary["objects"] == [1, 2]
    labels = _labels(out)
    for k, row in enumerate(summary["per_frame"]):
        for obj, rec in row["objects"].items():
            assert np.array_equal(decode_rle(rec["rle"]), labels[k] == int(obj))

    reads.clear()  # all done: nothing is tracked again
    assert _track(monkeypatch, sam2_model, video, out, *prompts, extra=["--no-overlay"]) == 0
    assert reads == [0]  # its size only
    # other prompts in the same folder: a clear error, or --overwrite
    assert _track(monkeypatch, sam2_model, video, out, "--box", "8,10,40,40", extra=["--no-overlay"]) == 2
    err = capsys.readouterr().err
    assert "other settings (prompts differ)" in err and "--overwrite" in err
    assert _track(monkeypatch, sam2_model, video, out, "--box", "8,10,40,40",
                  extra=["--no-overlay", "--overwrite", "--max-frames", "2"]) == 0
    assert json.loads((out / "track.json").read_text())["objects"] == [1]
    assert set(np.unique(_labels(out, 2)[0])) <= {0, 255}  # one object: 0 / 255 masks, as before


@pytest.mark.parametrize("args, expected", [
    (["--box", "1,2,3"], "--box '1,2,3': expected x0,y0,x1,y1: 4 finite numbers"),
    (["--box", "a,b,c,d"], "--box 'a,b,c,d': expected x0,y0,x1,y1[@FRAME][#OBJ]"),
    (["--point", "5,5@x"], "--point '5,5@x': expected x,y[,label][@FRAME][#OBJ], e.g. 120,80,1@3#2: the frame "
                           "after '@' must be a whole number, got 'x'"),
    (["--box", "1,2,30,40#0"], "--box '1,2,30,40#0': the object id must be an integer 1..255, got 0"),
    (["--point", "5,5,2"], "--point '5,5,2': a point's label is 1 (foreground) or 0 (background), got 2"),
    (["--box", "1,2,30,40@9"], "--box '1,2,30,40@9': frame 9 is past the video's end: it has 5 frames (0..4)"),
    (["--box", "30,2,1,40"], "x0 <= x1"),
    (["--point", "500,5"], "--point '500,5': points outside the 96x64 frame"),
    (["--box", "1,2,30,40", "--box", "3,3,9,9"], "two boxes for object 1 on frame 0"),
    (["--mask", "nothing.png@0#1"], "nothing.png"),
    ([], "give at least one prompt"),
])
def test_bad_prompts_exit_2_with_a_clear_message(monkeypatch, sam2_model, video, tmp_path, capsys, args, expected):
    assert _track(monkeypatch, sam2_model, video, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("swiftsam: error: ") and expected in err, err


def test_prompt_text_form():
    p = parse_prompt("box", "1,2,30,40@3#7")
    assert (p.box, p.frame, p.obj) == ((1, 2, 30, 40), 3, 7)
    p = parse_prompt("point", "5,6#2")
    assert (p.point, p.frame, p.obj) == ((5, 6, 1), 0, 2)
    p = parse_prompt("mask", "a@b#c.png@4#3", load_mask=lambda path: np.ones((2, 2)) if path == "a@b#c.png" else None)
    assert (p.frame, p.obj) == (4, 3)
    with pytest.raises(InputError, match="mask prompts are not taken here"):
        parse_prompt("mask", "m.png")


def test_image_model_tracks_several_objects_and_restarts_on_later_prompts(monkeypatch, video, tmp_path, capsys):
    model = randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=1).eval()
    out = tmp_path / "out"
    monkeypatch.setattr(video_track, "write_overlay", lambda *a, **k: (_ for _ in ()).throw(
        swiftsam.optional.MissingDependencyError("no OpenCV here")))  # the mp4 is optional
    first = np.zeros((H, W), bool)
    first[10:44, 10:42] = True  # object 1 on frame 1
    Image.fromarray(first.astype(np.uint8) * 255).save(tmp_path / "m.png")
    out.mkdir()  # a run of other prompts that failed before writing a frame does not block this one
    (out / "track.jsonl").write_text(json.dumps({"settings": {"prompts": []}}) + "\n")
    code = _track(monkeypatch, model, video, out, "--mask", f"{tmp_path / 'm.png'}@1#1",
                  "--box", ",".join(map(str, BOX2)) + "@2#2", "--point", "20,20@4", extra=["--engine", "torch"])
    assert code == 0, capsys.readouterr().err
    assert "overlay: skipped: no OpenCV here" in capsys.readouterr().out
    summary = json.loads((out / "track.json").read_text())
    labels = _labels(out)
    for k, row in enumerate(summary["per_frame"]):
        assert sorted(row["objects"]) == [[], ["1"], ["1", "2"], ["1", "2"], ["1", "2"], ["1", "2"]][k]
        for obj, rec in row["objects"].items():
            assert np.array_equal(decode_rle(rec["rle"]), labels[k] == int(obj))
    assert np.array_equal(labels[1] == 1, first)  # the mask prompt is frame 1's result
    assert not labels[0].any()  # no object before its first prompt
