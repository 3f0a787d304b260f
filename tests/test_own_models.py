"""The project's own models (docs/models.md): bundled fp16 weights that load offline, and a semantic check
that the shipped student segments real objects better than the box it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam.errors import CheckpointError, DownloadError
from swiftsam.eval.coco import box_rows
from swiftsam.eval.dataset import CocoImages
from swiftsam.eval.segmenters import BoxFillSegmenter, PredictorSegmenter
from swiftsam.image_io import load_image
from swiftsam.zoo import Bundled, get_entry, read_bundled, write_fp16
from swiftsam.zoo.hub import download
from tests.conftest import SHARED, randomize_

VAL = SHARED / "coco-mini"


def test_bundled_files_round_trip_and_are_checked(tmp_path):
    state = randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=5).state_dict()
    sha_enc = write_fp16(state, tmp_path / "enc.pt", ("image_encoder.",))
    sha_rest = write_fp16(state, tmp_path / "rest.pt", ("prompt_encoder.", "mask_decoder."))
    bundle = Bundled(("enc.pt", "rest.pt"), (sha_enc, sha_rest))
    back = read_bundled(bundle, tmp_path)
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert back[k].dtype == v.dtype  # float32 again (integer buffers stay integer)
        assert torch.equal(back[k], v.half().to(v.dtype) if v.is_floating_point() else v), k
    with pytest.raises(CheckpointError, match="damaged"):
        read_bundled(Bundled(("enc.pt", "rest.pt"), (sha_rest, sha_rest)), tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        read_bundled(Bundled(("enc.pt", "gone.pt"), (sha_enc, sha_rest)), tmp_path)
    with pytest.raises(CheckpointError, match="overlap"):
        read_bundled(Bundled(("enc.pt", "enc.pt"), (sha_enc, sha_enc)), tmp_path)


@pytest.mark.parametrize("name,size", [("swiftsam-r18", 256)])
def test_shipped_models_load_without_download(name, size, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a bundled model must not download")

    monkeypatch.setattr("swiftsam.zoo.hub.urllib.request.urlopen", no_network)
    model = swiftsam.load(name)
    assert model.box_mask_prior and model.spec.input_size == size
    assert swiftsam.load(name, input_size=384).spec.input_size == 384  # convolutional: any multiple of 32
    assert next(model.parameters()).dtype == torch.float32
    # the student keeps its teacher's prompt encoder and mask decoder: one shared file
    assert get_entry(name).bundled.files[-1] == "swiftsam-decoder.fp16.pt"
    with pytest.raises(DownloadError, match="nothing to download"):
        download(get_entry(name))


def test_default_model_is_the_shipped_student():
    assert swiftsam.DEFAULT_MODEL == "swiftsam-r18" and get_entry(swiftsam.DEFAULT_MODEL).bundled is not None


@pytest.mark.skipif(not (VAL / "val2017").is_dir(), reason="needs ../shared/data/coco-mini")
def test_shipped_student_beats_the_box_on_real_objects():
    """Box prompts on held-out coco-mini val images: the student's masks must overlap the ground truth
    better than the box itself does (box-fill, the baseline of benchmarks/accuracy.md)."""
    data = CocoImages(VAL / "val2017", VAL / "annotations/instances_val2017.json")
    student = PredictorSegmenter(swiftsam.Predictor(swiftsam.load()))
    box = BoxFillSegmenter()
    ious = {"student": [], "box": []}
    for image_id in data.image_ids[:6]:
        image = load_image(data.path(image_id))
        for name, seg in (("student", student), ("box", box)):
            seg.set_image(image, image_id)
            ious[name] += [r["iou"] for r in box_rows(data, seg, image_id, "nanosam")]
    assert len(ious["student"]) >= 40
    assert np.mean(ious["student"]) > np.mean(ious["box"]) + 0.03, {k: np.mean(v) for k, v in ious.items()}


@pytest.mark.skipif(not (VAL / "val2017").is_dir(), reason="needs ../shared/data/coco-mini")
def test_eval_cli_runs_the_default_model_at_another_input_size(tmp_path, capsys):
    from swiftsam.cli import main

    common = ["eval", "coco", "--images", str(VAL / "val2017"), "--annotations",
              str(VAL / "annotations/instances_val2017.json"), "--limit", "1"]
    assert main([*common, "--input-size", "320", "--out", str(tmp_path / "a")]) == 0
    import json

    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["config"]["input_size"] == 320 and summary["config"]["model"] == "swiftsam-r18"
    assert main([*common, "--model", "mobilesam", "--input-size", "320", "--out", str(tmp_path / "b")]) == 2
    assert "fixed input size" in capsys.readouterr().err


def test_bundled_weights_and_tracked_tree_stay_small():
    """The GPU test machine takes a working tree of at most 64 MiB: the bundled weights stay within 43 MiB
    (the image model's 38.1 MiB and the video model's memory modules, 4.1 MiB) and the whole tracked tree within
    48 MiB (room for carried data beside it)."""
    from swiftsam.zoo.bundled import WEIGHTS_DIR
    from swiftsam.zoo.registry import _REGISTRY

    shipped = {f for e in _REGISTRY.values() if e.bundled is not None for f in e.bundled.files}
    assert {p.name for p in WEIGHTS_DIR.glob("*.pt")} == shipped  # no stray weight file ships unreferenced
    weights = sum((WEIGHTS_DIR / f).stat().st_size for f in shipped)
    assert weights <= 43 * 2**20, f"bundled weights are {weights / 2**20:.1f} MiB"
    root = WEIGHTS_DIR.parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    import subprocess

    files = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
    tracked = sum((root / f).stat().st_size for f in files.decode().split("\0") if f and (root / f).is_file())
    assert tracked <= 48 * 2**20, f"the tracked tree is {tracked / 2**20:.1f} MiB"


def test_teacher_is_not_bundled_and_can_be_restored(tmp_path):
    with pytest.raises(CheckpointError, match="restore_teacher.py"):
        swiftsam.load("swiftsam-r34")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "restore_teacher.py"
    probe = subprocess.run(["git", "-C", str(root), "cat-file", "-e", "5cc41e9"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the git history with the teacher is not in this checkout")
    out = tmp_path / "swiftsam-r34.pt"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    teacher = swiftsam.load("swiftsam-r34", checkpoint=out)
    assert teacher.box_mask_prior and teacher.spec.input_size == 512
    assert sum(p.numel() for p in teacher.image_encoder.parameters()) > 1.4 * sum(
        p.numel() for p in swiftsam.load().image_encoder.parameters())  # a ResNet34, not the student
