"""`swiftsam track` with a SAM 2.1 model tracks with the model's memory (video.VideoPredictor)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import swiftsam
from swiftsam.apps.video_track import is_video_model, track_with_memory
from swiftsam.video import VideoPredictor

from .conftest import randomize_


def _frames(n=3, h=96, w=128):
    frames = []
    for k in range(n):
        im = np.full((h, w, 3), 40, np.uint8)
        im[20:60, 20 + 8 * k:70 + 8 * k] = (220, 60, 60)  # a red block moving right
        frames.append(im)
    return frames


def _model():
    torch.manual_seed(0)
    return randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=128, depth=(1, 1, 1, 1)), seed=2).eval()


def test_track_with_memory_equals_the_video_predictor():
    model, frames = _model(), _frames()
    assert is_video_model(model) and not is_video_model(swiftsam.build("nanosam-r18", input_size=128))
    got = list(track_with_memory(model, iter(frames), box=[20, 20, 70, 60]))
    vp = VideoPredictor(model)
    state = vp.init_state(frames)
    vp.add_new_points_or_box(state, 0, 1, box=np.array([20, 20, 70, 60], np.float32))
    want = {f: (lg[0, 0] > 0).cpu().numpy() for f, _, lg in vp.propagate_in_video(state)}
    assert len(got) == 3
    for k, frame in enumerate(got):
        assert np.array_equal(frame.mask, want[k]) and frame.lost == (not want[k].any())


def _sam2_checkpoint_and_frames(tmp_path) -> None:
    """tmp_path/t.pt: a random sam2.1-hiera-tiny at 128 px; tmp_path/frames: three JPEG frames."""
    from swiftsam.zoo.checkpoint import save_checkpoint

    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=128), seed=3).eval()
    model.zoo_name = "sam2.1-hiera-tiny"
    save_checkpoint(model, tmp_path / "t.pt")
    (tmp_path / "frames").mkdir()
    for k, im in enumerate(_frames()):
        Image.fromarray(im).save(tmp_path / "frames" / f"{k:05d}.jpg")


def test_track_cli_uses_the_memory_for_a_sam2_checkpoint(tmp_path, capsys):
    from swiftsam.cli import main

    _sam2_checkpoint_and_frames(tmp_path)
    code = main(["track", str(tmp_path / "frames"), "--model", "sam2.1-hiera-tiny", "--checkpoint",
                 str(tmp_path / "t.pt"), "--box", "20,20,70,60", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "track.json").read_text())
    assert summary["frames"] == 3 and (tmp_path / "out" / "00002.png").is_file()


def test_track_cli_runs_a_sam2_model_in_bf16(tmp_path, capsys):
    from swiftsam.cli import main

    _sam2_checkpoint_and_frames(tmp_path)
    args = ["track", str(tmp_path / "frames"), "--model", "sam2.1-hiera-tiny", "--checkpoint", str(tmp_path / "t.pt"),
            "--box", "20,20,70,60", "--device", "cpu", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "bad"), "--dtype", "fp16"]) == 2
    assert "in --dtype fp32 or bf16" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "out"), "--dtype", "bf16"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "track.json").read_text())
    assert summary["settings"]["tracker"] == {"sam2-memory": {"dtype": "bf16"}}
    assert summary["frames"] == 3 and (tmp_path / "out" / "00002.png").is_file()
