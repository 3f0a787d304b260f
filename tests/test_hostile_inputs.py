"""Ordinary but hostile inputs: phone photos (EXIF orientation), 16-bit and float images, decompression
bombs, NaN prompts to every predict entry point, and checkpoints that carry code."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam import InputError, Predictor
from swiftsam.cli import main
from swiftsam.errors import CheckpointError
from swiftsam.image_io import load_image
from swiftsam.transforms import to_prompt_frame
from tests.conftest import ROOT

ASSET = ROOT / "assets" / "snowboard.jpg"  # 640 x 428
ORIENTATION = 0x0112

# EXIF Orientation -> how to turn the stored pixels into what a viewer shows, written out by hand
UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    6: lambda a: np.rot90(a, k=-1),  # stored turned left: turn 90 degrees clockwise
    8: lambda a: np.rot90(a, k=1),  # stored turned right: turn 90 degrees counter-clockwise
}


def phone_photo(path, orientation: int):
    """Write the asset as a JPEG tagged with ``orientation``; return the pixels as stored (not turned)."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    with Image.open(ASSET) as im:
        im.convert("RGB").save(path, format="JPEG", quality=95, exif=exif)
    with Image.open(path) as im:
        assert im.getexif()[ORIENTATION] == orientation
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied_to_files_and_pil_images(tmp_path, orientation):
    path = tmp_path / f"phone{orientation}.jpg"
    stored = phone_photo(path, orientation)
    expected = UPRIGHT[orientation](stored)
    assert np.array_equal(load_image(path), expected)
    with Image.open(path) as im:
        assert np.array_equal(load_image(im), expected)
        assert im.size == (640, 428)  # the caller's image is left as it was
    assert np.array_equal(load_image(stored), stored)  # arrays carry no EXIF: taken as they are


def test_segment_cli_takes_prompts_in_the_displayed_frame(tmp_path, capsys):
    """Orientation 6: stored 640 wide x 428 high, shown 428 wide x 640 high. The box lies below y = 428, so it
    is valid only in the displayed frame; the mask has the displayed size and is the displayed image's."""
    path, out = tmp_path / "phone.jpg", tmp_path / "mask.png"
    shown = UPRIGHT[6](phone_photo(path, 6))
    box = [20.0, 450.0, 400.0, 630.0]
    rc = main(["segment", str(path), "--box", ",".join(str(v) for v in box), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    labels = np.asarray(Image.open(out))
    assert labels.shape == (640, 428)
    reference = Predictor()  # the default model, as the CLI runs it
    reference.set_image(np.ascontiguousarray(shown))
    masks, _, _ = reference.predict_batch(boxes=np.array([box]), multimask_output=False)
    assert np.array_equal(labels == 255, masks[0, 0])


# ------------------------------------------------------------------------------ 16-bit and float images
def sixteen_bit(h: int = 48, w: int = 64) -> np.ndarray:
    """A 16-bit gray image over the full range: a ramp from 0 to 65535 plus noise."""
    ramp = np.linspace(0, 65535, h * w).reshape(h, w)
    noise = np.random.default_rng(0).integers(0, 65536, (h, w))
    a = np.where(np.arange(w)[None] % 2 == 0, ramp, noise)
    a[0, 0], a[0, 1] = 0, 65535
    return a.astype(np.uint16)


def eight_bit_reference(a: np.ndarray) -> np.ndarray:
    """16-bit values to 8 bits as documented: divide by 257, round to nearest; gray replicated to RGB."""
    g = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    return np.stack([g] * 3, axis=-1)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = sixteen_bit()
    path = tmp_path / "gray16.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    got = load_image(path)
    assert got.dtype == np.uint8 and np.array_equal(got, eight_bit_reference(a))
    assert got.min() == 0 and got.max() == 255  # the full range survives


@pytest.mark.parametrize("kind", ["uint16 array", "PIL I;16", "PIL I (int32)", "PIL F (float32)", "int64 array",
                                  "float64 array"])
def test_16bit_values_in_any_container(kind):
    a = sixteen_bit()
    image = {
        "uint16 array": a,
        "PIL I;16": Image.fromarray(a),
        "PIL I (int32)": Image.fromarray(a.astype(np.int32)),
        "PIL F (float32)": Image.fromarray(a.astype(np.float32)),
        "int64 array": a.astype(np.int64),
        "float64 array": a.astype(np.float64),
    }[kind]
    if isinstance(image, Image.Image):
        assert image.mode in ("I;16", "I", "F")
    assert np.array_equal(load_image(image), eight_bit_reference(a))


def test_uint16_is_16bit_by_its_type_even_when_dark():
    dark = np.full((4, 4), 200, np.uint16)  # 200 / 65535: nearly black, not 200 / 255
    assert (load_image(dark) == 1).all()


def test_float_images_in_0_255_are_rounded():
    a = np.array([[0.2, 0.5001, 127.6], [254.4, 254.6, 255.0]])
    assert np.array_equal(load_image(a)[..., 0], [[0, 1, 128], [254, 255, 255]])


@pytest.mark.parametrize(
    "image,message",
    [
        (np.full((8, 8), np.nan, np.float32), "NaN or infinite"),
        (np.where(np.eye(8, dtype=bool), np.nan, 100.0), "NaN or infinite"),
        (np.where(np.eye(8, dtype=bool), np.inf, 100.0), "NaN or infinite"),
        (Image.fromarray(np.full((8, 8), np.nan, np.float32)), "NaN or infinite"),
        (np.random.default_rng(0).random((8, 8, 3)), "0..1: multiply by 255"),
        (np.full((8, 8), -3.0), r"0..255 \(8-bit\) or 0..65535 \(16-bit\)"),
        (np.full((8, 8), 70000, np.int32), r"got 70000..70000"),
        (np.ones((8, 8), bool), "integers or floats"),
        (np.ones((8, 8), np.complex64), "integers or floats"),
    ],
)
def test_images_that_cannot_be_read_as_8_bits(image, message):
    with pytest.raises(InputError, match=message):
        load_image(image)


# ----------------------------------------------------------------------------------- huge images
def test_max_pixels_is_checked_from_the_header(tmp_path):
    with pytest.raises(InputError, match=r"640x428 = 273,920 pixels, over the limit of 1,000 pixels") as err:
        load_image(ASSET, max_pixels=1000)
    assert "--max-pixels" in str(err.value) and "max_pixels=None" in str(err.value)
    assert load_image(ASSET, max_pixels=640 * 428).shape == (428, 640, 3)
    with pytest.raises(InputError, match="max_pixels must be a positive number"):
        load_image(ASSET, max_pixels=0)


@contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning included
        yield


def test_pil_decompression_bomb_becomes_input_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the asset is over twice that: PIL raises in open
    with pytest.raises(InputError, match=r"273,920 pixels, over the limit of 1,000 pixels"):
        load_image(ASSET)
    with no_warnings():
        assert load_image(ASSET, max_pixels=None).shape == (428, 640, 3)  # trusted: PIL's limit lifted...
    assert Image.MAX_IMAGE_PIXELS == 1000  # ...for that call only
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # between PIL's warning and its error
    with no_warnings(), pytest.raises(InputError, match="640x428 = 273,920 pixels"):
        load_image(ASSET)


def test_cli_refuses_images_over_the_limit_with_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "mask.png"
    assert main(["segment", str(ASSET), "--box", "10,10,50,50", "--out", str(out), "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err
    assert "swiftsam: error:" in err and "273,920 pixels" in err and "--max-pixels N" in err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's DecompressionBombError path
    for command in (["segment", str(ASSET), "--box", "10,10,50,50", "--out", str(out)],
                    ["everything", str(ASSET), "--out", str(tmp_path / "ev"), "--strict", "--points-per-side", "2"]):
        assert main(command) == 2, command
        assert "over the limit of 1,000 pixels" in capsys.readouterr().err
    assert not out.exists()
    assert main(["segment", str(ASSET), "--box", "10,10,50,50", "--out", str(out), "--max-pixels", "0"]) == 0
    monkeypatch.undo()
    assert Image.open(out).size == (640, 428)  # 0: no limit, PIL's lifted for the trusted file
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(ASSET), "--box", "10,10,50,50", "--out", str(out), "--max-pixels", "-5"])
    assert exit_.value.code == 2 and "--max-pixels must be a number of pixels" in capsys.readouterr().err


# ------------------------------------------------------------------------------ NaN prompts everywhere
@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    p = Predictor(swiftsam.build("nanosam-r18", input_size=256))
    p.set_image(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    return p


NAN_BOX = np.array([10.0, np.nan, 50.0, 60.0])


def test_nan_box_is_refused_by_every_predict(predictor):
    with pytest.raises(InputError, match="NaN"):
        predictor.predict(box=NAN_BOX)
    with pytest.raises(InputError, match="NaN"):
        predictor.predict_batch(boxes=NAN_BOX[None])
    with pytest.raises(InputError, match="NaN"):
        predictor.predict_torch(None, None, boxes=torch.tensor(NAN_BOX[None], dtype=torch.float32))


def test_predict_torch_checks_prompts_in_the_prompt_frame(predictor):
    # 160 x 120 resized into the 1024 prompt frame: 1024 x 768
    box = torch.tensor([[100.0, 100.0, 900.0, 700.0]])
    pts, labels = torch.tensor([[[500.0, 400.0]]]), torch.tensor([[1]])
    no_points = dict(point_coords=None, point_labels=None)
    bad = [
        (dict(point_coords=torch.tensor([[[np.inf, 1.0]]]), point_labels=labels), "NaN or infinite"),
        (dict(point_coords=torch.tensor([[[500.0, 800.0]]]), point_labels=labels),
         "outside the 1024x768 image in the prompt frame"),
        (dict(point_coords=pts, point_labels=torch.tensor([[7]])), r"point_labels must be 1 \(foreground\)"),
        (dict(point_coords=pts, point_labels=None), "point_labels are required"),
        (dict(point_coords=None, point_labels=labels), "without point_coords"),
        (dict(point_coords=pts[0], point_labels=labels), r"shape \(B, N, 2\)"),
        (dict(**no_points, boxes=torch.tensor([[0.0, 0.0, 1030.0, 50.0]])), "box outside the 1024x768"),
        (dict(**no_points, boxes=torch.tensor([[50.0, 0.0, 10.0, 50.0]])), "x0 <= x1"),
        (dict(**no_points, boxes=box, mask_input=torch.full((1, 1, 256, 256), np.nan)), "mask_input contains NaN"),
        (dict(**no_points, boxes=box, mask_input=torch.zeros((1, 1, 64, 64))), "mask_input must have shape"),
        (dict(point_coords=pts.expand(2, 1, 2), point_labels=labels.expand(2, 1), boxes=box), "differ in size"),
        (no_points, "empty prompt"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InputError, match=message):
            predictor.predict_torch(**kwargs)
    # valid prompts, right at the frame's edges, give what predict_batch gives for the same pixels
    pixel_box = np.array([[0.0, 0.0, 160.0, 120.0]])
    framed = to_prompt_frame(pixel_box.reshape(-1, 2, 2), (120, 160), 1024).reshape(-1, 4)
    masks, scores, _ = predictor.predict_torch(None, None, boxes=torch.tensor(framed, dtype=torch.float32))
    ref_masks, ref_scores, _ = predictor.predict_batch(boxes=pixel_box)
    assert masks.shape == (1, 3, 120, 160) and torch.isfinite(scores).all()
    assert np.array_equal(masks.numpy(), ref_masks) and np.allclose(scores.numpy(), ref_scores)


# ---------------------------------------------------------------------------- checkpoints carrying code
class _RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickled_code_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsACommand(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError) as err:
        swiftsam.load("nanosam-r18", checkpoint=path)
    message = str(err.value)
    assert "pickled Python code or objects" in message and "system" in message
    assert "allow_pickle=True" in message and "only for files you trust" in message
    assert "not a PyTorch checkpoint" not in message
    assert main(["segment", str(ASSET), "--model", "nanosam-r18", "--checkpoint", str(path), "--box", "1,1,9,9",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert "pickled Python code" in capsys.readouterr().err
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02garbage" * 8)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        swiftsam.load("nanosam-r18", checkpoint=junk)


def test_coco_images_keep_the_frame_of_their_annotations(tmp_path):
    """A rotated JPEG whose annotation gives the stored size (COCO's own files: annotated as stored) is
    evaluated in the stored frame; one annotated as displayed, in the displayed frame; any other size is
    an error naming both."""
    import json

    from swiftsam.eval.dataset import CocoImages

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = 255
    buf = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    (tmp_path / "img").mkdir()
    buf.save(tmp_path / "img" / "a.jpg", exif=exif, quality=95)
    for (h, w), want in (((40, 60), (40, 60)), ((60, 40), (60, 40))):
        ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}], "annotations": [],
               "categories": [{"id": 1, "name": "x"}]}
        (tmp_path / "ann.json").write_text(json.dumps(ann))
        assert CocoImages(tmp_path / "img", tmp_path / "ann.json").image(1).shape[:2] == want
    ann["images"][0].update(height=10, width=10)
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(InputError, match="does not belong"):
        CocoImages(tmp_path / "img", tmp_path / "ann.json").image(1)
