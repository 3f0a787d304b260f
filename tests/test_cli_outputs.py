"""The command line's outputs (issue 17): bad output paths fail before any work with a clear error, writes are
all-or-nothing, label PNGs say what they lose, and models, exports and checkpoints stay consistent."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
import swiftsam.cli as cli
from swiftsam.errors import CheckpointError, InputError
from swiftsam.predictor import Predictor
from swiftsam.visualize import hidden_objects, label_image
from tests.conftest import ROOT

ASSET = ROOT / "assets" / "snowboard.jpg"
BOX = ["--box", "275,15,410,409"]


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def no_model(monkeypatch):
    """The model must not even be loaded: output problems are found before any work."""
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(cli.common, "load", boom)  # every command loads its model through cli.common


@pytest.fixture
def small_image(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def fake_masks(monkeypatch, masks: np.ndarray) -> None:
    """predict_batch returns ``masks`` (N x H x W): the CLI's output path without the decoder's cost."""
    def predict_batch(self, point_coords=None, point_labels=None, boxes=None, multimask_output=True, **kw):
        n = masks.shape[0]
        return masks[:, None], np.linspace(0.9, 0.5, n)[:, None], None

    monkeypatch.setattr(Predictor, "predict_batch", predict_batch)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part") or "probe" in p.name)


# ------------------------------------------------------------------ 1. output paths


def make_read_only(folder, monkeypatch):
    """A folder nobody may write: chmod for ordinary users; root ignores modes, so for root creating a file
    there also fails (the error a read-only folder gives)."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        original = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and os.path.realpath(dir) == os.path.realpath(folder):
                raise PermissionError(errno.EACCES, "Permission denied", str(folder))
            return original(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("case", ["existing folder", "under a file", "read-only folder", "overlay under a file",
                                  "out-dir is a file"])
def test_segment_checks_its_outputs_before_loading_the_model(case, tmp_path, no_model, capsys, monkeypatch):
    (tmp_path / "file.txt").write_text("not a folder")
    args = {
        "existing folder": ["--out", str(tmp_path)],
        "under a file": ["--out", str(tmp_path / "file.txt" / "m.png")],
        "read-only folder": ["--out", str(tmp_path / "ro" / "m.png")],
        "overlay under a file": ["--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "file.txt" / "o.png")],
        "out-dir is a file": ["--out-dir", str(tmp_path / "file.txt")],
    }[case]
    expected = {
        "existing folder": "is a folder: give the file to write",
        "under a file": "file.txt is a file, not a folder",
        "read-only folder": "the folder is not writable",
        "overlay under a file": "cannot write --overlay",
        "out-dir is a file": "--out-dir",  # and: is a file, not a folder
    }[case]
    if case == "read-only folder":
        make_read_only(tmp_path / "ro", monkeypatch)
    try:
        rc = cli.main(["segment", str(ASSET), *BOX, *args])
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err
    if case == "out-dir is a file":
        assert "is a file, not a folder" in err
    assert not (tmp_path / "m.png").exists() and leftovers(tmp_path) == []


def test_segment_full_disk_leaves_neither_mask_nor_overlay(tmp_path, capsys, monkeypatch):
    original = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if self.mode == "RGB":  # the overlay, written after the label PNG
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out, ov = tmp_path / "m.png", tmp_path / "o.png"
    assert cli.main(["segment", str(ASSET), *BOX, "--out", str(out), "--overlay", str(ov)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the disk is full" in err and str(ov) in err
    assert not out.exists() and not ov.exists()  # the mask is never left without its overlay
    assert list(tmp_path.iterdir()) == []  # no temporaries either


def test_export_checks_its_output_folder_first(tmp_path, no_model, capsys):
    (tmp_path / "file.txt").write_text("x")
    assert cli.main(["export", "swiftsam-r18", "--out", str(tmp_path / "file.txt")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file, not a folder" in err
    assert cli.main(["export", "swiftsam-r18", "--out", str(tmp_path / "file.txt" / "onnx")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_unwritable_swiftsam_home_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SWIFTSAM_HOME", str(tmp_path / "file" / "home"))  # fails for root too
    monkeypatch.delenv("SWIFTSAM_MIRROR", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download into a cache that cannot be written")

    monkeypatch.setattr("swiftsam.zoo.hub._fetch", no_network)
    assert cli.main(["download", "mobilesam"]) == 2
    err = capsys.readouterr().err
    assert "SWIFTSAM_HOME" in err and "writable folder" in err and "--checkpoint" in err

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert cli.main(["segment", str(ASSET), *BOX, "--engine", "onnxruntime", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "ONNX export cache" in err and "SWIFTSAM_HOME" in err and "--onnx-dir" in err
    assert not (tmp_path / "m.png").exists()


# ------------------------------------------------------------------ label PNGs: many objects, overlaps, --out-dir


def test_more_than_255_objects_give_a_16_bit_label_png(small_image, tmp_path, monkeypatch, capsys):
    n = 300
    masks = np.zeros((n, 20, 24), bool)
    masks.reshape(n, -1)[np.arange(n), np.arange(n)] = True  # object k: pixel k, no overlaps
    fake_masks(monkeypatch, masks)
    out = tmp_path / "labels.png"
    assert cli.main(["segment", str(small_image), *(["--box", "0,0,5,5"] * n), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "16-bit label PNG" in err and "lost pixels" not in err
    labels = np.asarray(Image.open(out))
    assert labels.dtype == np.uint16
    assert np.array_equal(labels.reshape(-1)[:n], np.arange(1, n + 1))
    assert label_image(masks[:255]).dtype == np.uint8 and label_image(masks[:255]).max() == 255


def test_overlaps_are_reported_and_out_dir_keeps_every_object_whole(small_image, tmp_path, monkeypatch, capsys):
    masks = np.zeros((3, 20, 24), bool)
    masks[0, 2:6, 2:6] = True  # entirely under object 3
    masks[1, 10:16, 10:20] = True  # partly under object 3
    masks[2, 0:12, 0:14] = True
    fake_masks(monkeypatch, masks)
    out, folder = tmp_path / "labels.png", tmp_path / "objects"
    assert cli.main(["segment", str(small_image), *(["--box", "0,0,5,5"] * 3), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 of 3 objects lost pixels" in err and "1 entirely hidden" in err and "--out-dir" in err
    assert hidden_objects(masks, np.asarray(Image.open(out))) == (2, 1)

    assert cli.main(["segment", str(small_image), *(["--box", "0,0,5,5"] * 3), "--out-dir", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in folder.iterdir()) == ["mask_001.png", "mask_002.png", "mask_003.png"]
    for k, obj in enumerate(report["objects"]):
        assert obj["file"] == str(folder / f"mask_{k + 1:03d}.png")
        assert np.array_equal(np.asarray(Image.open(obj["file"])) > 0, masks[k])
    assert report["masks"] is None and report["mask_dir"] == str(folder)
    assert cli.main(["segment", str(small_image), "--box", "0,0,5,5"]) == 2
    assert "--out-dir DIR" in capsys.readouterr().err


# ------------------------------------------------------------------ --input-size


@pytest.mark.parametrize("command", [["segment", str(ASSET), *BOX, "--out", "m.png"], ["export", "swiftsam-r18", "--out", "o"],
                                     ["everything", str(ASSET), "--out", "e"]])
def test_input_size_is_taken_and_checked_by_every_command(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    seen = {}

    def load(name, checkpoint=None, **kwargs):
        seen.update(kwargs, name=name)
        raise InputError("stop here")  # what load() was given is all this test needs

    monkeypatch.setattr(cli.common, "load", load)
    assert cli.main([*command, "--input-size", "512"]) == 2
    seen.pop("device", None)  # --device (auto) goes to load too
    assert seen == {"name": "swiftsam-r18", "input_size": 512} and "stop here" in capsys.readouterr().err
    seen.clear()
    for bad, message in (("100", "input size must be a multiple of 32"), ("0", "positive number of pixels")):
        assert cli.main([*command, "--input-size", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "--input-size" in err and not seen
    fixed = ["export", "mobilesam", *command[2:]] if command[0] == "export" else [*command, "--model", "mobilesam"]
    assert cli.main([*fixed, "--input-size", "512"]) == 2
    assert "mobilesam has a fixed input size" in capsys.readouterr().err and not seen


def test_load_refuses_an_input_size_the_encoder_cannot_take():
    with pytest.raises(InputError, match="multiple of 32"):
        swiftsam.build("nanosam-r18", input_size=100)
    with pytest.raises(InputError, match="fixed input size"):
        swiftsam.build("mobilesam", input_size=512)


# ------------------------------------------------------------------ --onnx-dir: the weights it was exported from


@pytest.fixture(scope="module")
def default_model():
    return swiftsam.load()


def fake_export(folder, model, **manifest) -> None:
    """A folder as `swiftsam export` writes it, for ``model``'s weights; the graphs are not valid ONNX."""
    from swiftsam.export.onnx import FORMAT, MANIFEST, weights_fingerprint

    folder.mkdir()
    for part in ("encoder", "decoder"):
        (folder / f"{part}.onnx").write_bytes(b"this is not an onnx graph")
    files = {p: {"file": f"{p}.onnx", "inputs": [], "outputs": []} for p in ("encoder", "decoder")}
    (folder / MANIFEST).write_text(json.dumps({
        "format": FORMAT, "model": model.zoo_name, "fingerprint": weights_fingerprint(model),
        "weights": model.weights_source, "spec": {"input_size": model.spec.input_size}, "files": files, **manifest}))


def test_onnx_dir_of_other_weights_is_refused(default_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    fake_export(tmp_path / "onnx", default_model)  # the bundled weights (A)
    other = tmp_path / "b.pt"
    swiftsam.zoo.save_checkpoint(swiftsam.build("swiftsam-r18"), other)  # B: the same model, other weights
    assert cli.main(["segment", str(ASSET), *BOX, "--checkpoint", str(other), "--engine", "onnxruntime",
                     "--onnx-dir", str(tmp_path / "onnx"), "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "exported from other weights" in err and "swiftsam-r18 (bundled)" in err and str(other) in err
    assert not (tmp_path / "m.png").exists()


def test_corrupt_graph_in_onnx_dir_is_a_clear_error(default_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    fake_export(tmp_path / "onnx", default_model)
    assert cli.main(["segment", str(ASSET), *BOX, "--engine", "onnxruntime", "--onnx-dir", str(tmp_path / "onnx"),
                     "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime cannot load" in err and "encoder.onnx" in err and "export it again" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ checkpoints: what they record, and their bytes


def test_checkpoint_records_its_model_and_loads_with_its_settings(tmp_path):
    path = tmp_path / "nanosam.pt"
    student = swiftsam.build("nanosam-r18", input_size=512)  # no box prior, another input size than swiftsam-r18's
    swiftsam.zoo.save_checkpoint(student, path)
    assert swiftsam.zoo.read_state_dict(path).keys() == student.state_dict().keys()  # still reads as a state dict

    with pytest.warns(UserWarning, match="holds nanosam-r18 weights .* loaded as swiftsam-r18"):
        model = swiftsam.load("swiftsam-r18", checkpoint=path)
    assert model.spec.input_size == 512 and model.box_mask_prior is False
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), student.state_dict().values()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = swiftsam.load("nanosam-r18", checkpoint=path)  # its own name: no warning, the recorded size
        assert same.spec.input_size == 512
        chosen = swiftsam.load("nanosam-r18", checkpoint=path, input_size=256, box_mask_prior=True)
        assert chosen.spec.input_size == 256 and chosen.box_mask_prior is True  # the caller decides

    other = tmp_path / "r34.pt"
    swiftsam.zoo.save_checkpoint(swiftsam.build("nanosam-r34", input_size=256), other)
    with pytest.raises(CheckpointError, match=r"holds nanosam-r34 weights .* not fit swiftsam-r18: load it as nanosam-r34 \(--model nanosam-r34\)"):
        swiftsam.load("swiftsam-r18", checkpoint=other)


def test_plain_state_dicts_load_as_before(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(swiftsam.build("nanosam-r18", input_size=256).state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = swiftsam.load("swiftsam-r18", checkpoint=path)
    assert model.spec.input_size == 256 and model.box_mask_prior is True  # the entry's settings


def test_cli_warns_when_a_checkpoint_records_another_model(tmp_path, capsys):
    path = tmp_path / "nanosam.pt"
    swiftsam.zoo.save_checkpoint(swiftsam.build("nanosam-r18", input_size=256), path)
    with pytest.warns(UserWarning, match="nanosam-r18 .* swiftsam-r18"):
        assert cli.main(["segment", str(ASSET), *BOX, "--checkpoint", str(path), "--out", str(tmp_path / "m.png")]) == 0


def test_saving_the_same_weights_gives_the_same_bytes(tmp_path):
    from swiftsam.zoo.bundled import write_fp16

    model = swiftsam.build("nanosam-r18", input_size=256)
    a, b = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    swiftsam.zoo.save_checkpoint(model, a)
    swiftsam.zoo.save_checkpoint(model, b)
    first = sha256(a)
    swiftsam.zoo.save_checkpoint(model, a)  # again, over the first
    assert sha256(b) == first == sha256(a)
    state = model.state_dict()
    assert write_fp16(state, tmp_path / "x.fp16.pt", ("image_encoder.",)) == \
        write_fp16(state, tmp_path / "y.fp16.pt", ("image_encoder.",))
    assert leftovers(tmp_path) == []
