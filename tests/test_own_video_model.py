"""swiftsam's own video model (``swiftsam-r18-video``, docs/models.md "Video model"): bundled and offline, the
single-level SAM 2 path it runs on, and its training recipe (``train-video``, swiftsam/train/video.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam.errors import CheckpointError
from swiftsam.modeling.sam2 import OwnVideoSam
from swiftsam.video import VideoPredictor
from swiftsam.zoo import get_entry, read_bundled

from .conftest import SHARED, randomize_

NAME = "swiftsam-r18-video"
DAVIS = SHARED / "davis2016"


def _frames(n=4, h=72, w=96):
    frames = []
    for k in range(n):
        im = np.full((h, w, 3), 30, np.uint8)
        im[16:48, 12 + 6 * k : 44 + 6 * k] = (230, 200, 40)  # a yellow block moving right
        im[40:64, 60:88] = (40, 90, 220)  # a blue block standing still
        frames.append(im)
    return frames


@pytest.fixture(scope="module")
def video_model():
    return swiftsam.load(NAME, device="cpu")


def test_bundled_video_model_loads_offline_and_is_checked(video_model, monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("a bundled model must not download")

    monkeypatch.setattr("swiftsam.zoo.hub.urllib.request.urlopen", no_network)
    model = swiftsam.load(NAME, device="cpu")
    assert isinstance(model, OwnVideoSam) and model.box_mask_prior and model.spec.input_size == 256
    bundle = get_entry(NAME).bundled
    # it reuses the image model's files (no second copy) and adds one small file of its own
    assert bundle.files[:2] == get_entry("swiftsam-r18").bundled.files
    from swiftsam.zoo.bundled import WEIGHTS_DIR

    assert (WEIGHTS_DIR / bundle.files[2]).stat().st_size <= 5 * 10**6
    # a damaged copy of its own file is refused (sha256)
    for f in bundle.files:
        shutil.copy(WEIGHTS_DIR / f, tmp_path / f)
    data = bytearray((tmp_path / bundle.files[2]).read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / bundle.files[2]).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        read_bundled(bundle, tmp_path)


def test_video_model_segments_images_as_the_image_model(video_model):
    """Its prompt heads are the image model's, unchanged: the same box gives the same masks."""
    image = _frames(1, 96, 128)[0]
    image_model = swiftsam.load("swiftsam-r18", device="cpu")
    box = np.array([12, 16, 44, 48], np.float32)
    got = swiftsam.Predictor(video_model, engine="torch")
    want = swiftsam.Predictor(image_model, engine="torch")
    got.set_image(image)
    want.set_image(image)
    m1, _, _ = got.predict(box=box, multimask_output=False)
    m2, _, _ = want.predict(box=box, multimask_output=False)
    assert m1.any() and np.array_equal(m1, m2)
    # the decoder alone: the same logits and IoU predictions for the same inputs
    torch.manual_seed(0)
    emb, sparse = 0.3 * torch.randn(1, 256, 64, 64), torch.randn(2, 3, 256)
    pe = image_model.prompt_encoder
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(2, -1, 64, 64)
    with torch.no_grad():
        l1, i1 = image_model.mask_decoder.predict_all(emb, pe.get_dense_pe(), sparse, dense)[:2]
        l2, i2, _ = video_model.sam_mask_decoder.predict_all(emb, pe.get_dense_pe(), sparse, dense)
    assert torch.allclose(l1, l2, atol=1e-3) and torch.allclose(i1, i2, atol=1e-5)


def test_video_model_tracks_with_the_video_predictor(video_model):
    frames = _frames()
    vp = VideoPredictor(video_model)
    assert not vp.tracker.config.use_obj_ptrs_in_encoder  # the settings it was trained with
    state = vp.init_state(frames)
    first = np.zeros(frames[0].shape[:2], bool)
    first[16:48, 12:44] = True
    vp.add_new_mask(state, 0, 1, first)
    out = {f: lg for f, _, lg in vp.propagate_in_video(state)}
    assert sorted(out) == [0, 1, 2, 3]
    for lg in out.values():
        assert lg.shape == (1, 1, 72, 96) and torch.isfinite(lg).all()
    # frames 1..3 come from the memory (frame 0 is the given mask)
    assert state.objects[1].non_cond.keys() == {1, 2, 3}


def test_batched_objects_equal_one_at_a_time(video_model):
    """The single-level path (memory grid + decoder grid) gives each object the same result batched or alone."""
    frames = _frames(3)
    results = []
    for max_batch in (None, 1):
        vp = VideoPredictor(video_model, max_batch=max_batch)
        state = vp.init_state(frames)
        vp.add_new_points_or_box(state, 0, "a", box=np.array([12, 16, 44, 48], np.float32))
        vp.add_new_points_or_box(state, 0, "b", points=np.array([[74, 52]], np.float32), labels=np.array([1]))
        results.append({f: lg.clone() for f, _, lg in vp.propagate_in_video(state)})
    for f in results[0]:
        assert torch.allclose(results[0][f], results[1][f], atol=1e-3), f


def test_single_level_sam2_batched_equals_one_at_a_time():
    """SAM 2 with use_high_res_features=False (no conv_s0 / conv_s1): one feature level for the image path and
    the video path, each object the same batched or alone."""
    from swiftsam.modeling.encoders.fpn_neck import build_sam2_image_encoder
    from swiftsam.modeling.memory_attention import build_memory_attention
    from swiftsam.modeling.memory_encoder import build_memory_encoder
    from swiftsam.modeling.prompt_encoder import PromptEncoder
    from swiftsam.modeling.sam2 import Sam2, sam2_image_spec
    from swiftsam.modeling.sam2_mask_decoder import Sam2MaskDecoder, sam2_two_way_transformer

    torch.manual_seed(0)
    decoder = Sam2MaskDecoder(transformer_dim=256, transformer=sam2_two_way_transformer(depth=1),
                              use_high_res_features=False)
    assert not hasattr(decoder, "conv_s0")
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=16)
    model = Sam2(build_sam2_image_encoder("tiny", (1, 1, 1, 1)), pe, decoder, build_memory_attention(num_layers=1),
                 build_memory_encoder(), sam2_image_spec(128))
    model = randomize_(model, seed=4).eval()
    assert [f.name for f in model.contract.features] == ["image_embed"]
    assert len(model.image_stage()(torch.zeros(1, 3, 128, 128))) == 1
    p = swiftsam.Predictor(model, engine="torch")
    p.set_image(_frames(1)[0])
    masks, _, _ = p.predict(box=np.array([12, 16, 44, 48]))
    assert masks.shape[-2:] == (72, 96)
    frames = _frames(3)
    results = []
    for max_batch in (None, 1):
        vp = VideoPredictor(model, max_batch=max_batch)
        state = vp.init_state(frames)
        vp.add_new_points_or_box(state, 0, 1, box=np.array([12, 16, 44, 48], np.float32))
        vp.add_new_points_or_box(state, 0, 2, points=np.array([[74, 52]], np.float32), labels=np.array([1]))
        results.append({f: lg.clone() for f, _, lg in vp.propagate_in_video(state)})
    for f in results[0]:
        assert torch.allclose(results[0][f], results[1][f], atol=1e-3), f


def test_track_cli_defaults_to_the_video_model(tmp_path, capsys):
    from swiftsam.cli import main
    from swiftsam.cli.track import DEFAULT_TRACK_MODEL

    assert DEFAULT_TRACK_MODEL == NAME
    (tmp_path / "frames").mkdir()
    for k, im in enumerate(_frames(3)):
        Image.fromarray(im).save(tmp_path / "frames" / f"{k:05d}.jpg")
    code = main(["track", str(tmp_path / "frames"), "--box", "12,16,44,48", "--out", str(tmp_path / "out"),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "track.json").read_text())
    assert summary["frames"] == 3 and (tmp_path / "out" / "00002.png").is_file()


@pytest.mark.skipif(not DAVIS.exists(), reason="needs ../shared/data/davis2016")
def test_train_video_runs_and_resumes(tmp_path):
    from swiftsam.train.video import MEMORY_FILE, load_video_config, train_video, write_memory_weights

    cfg = load_video_config(None, {"out": str(tmp_path / "run"), "davis": str(DAVIS), "davis_sequences": ["blackswan"],
                                   "coco": [], "max_images": 3, "steps": 2, "clip_len": [2, 3], "input_size": 128,
                                   "checkpoint_every": 1, "init": None, "memory_layers": 1, "fuser_layers": 1})
    first = train_video(cfg, log=lambda s: None)
    assert first["step"] == 2 and first["done"]
    before = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert before["step"] == 2
    cfg.steps = 3
    lines = []
    again = train_video(cfg, log=lines.append)
    assert again["step"] == 3 and any("resumed" in line and "step 2" in line for line in lines)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    changed = [k for k in after["model"] if not torch.equal(after["model"][k], before["model"][k])]
    assert changed and all(not k.startswith(("image_encoder.", "sam_mask_decoder.")) for k in after["model"])
    sha = write_memory_weights(tmp_path / "run" / "model.pt", tmp_path / MEMORY_FILE)
    assert len(sha) == 64
    with pytest.raises(swiftsam.errors.InputError, match="unknown train-video setting"):
        load_video_config(None, {"out": "x", "stepz": 3})


def test_train_cli_dispatches_train_video_and_checks_its_settings(tmp_path, capsys):
    from swiftsam.cli import main

    cfg = tmp_path / "video.yaml"
    cfg.write_text("recipe: train-video\nout: " + str(tmp_path / "run") + "\nstepz: 3\n")
    assert main(["train", str(cfg)]) == 2
    assert "unknown train-video setting(s) stepz" in capsys.readouterr().err
    assert main(["train", "--recipe", "train-video", "--out", str(tmp_path / "run"), "--student", "nanosam-r18"]) == 2
    assert "train-video does not take --student" in capsys.readouterr().err
