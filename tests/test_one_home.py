"""One home each: file sha256, image listing, COCO RLE, the empty-mask IoU rule, and training data
normalised with the model's own pixel mean and std (issue 18)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import swiftsam
from swiftsam.errors import InputError
from swiftsam.eval.metrics import mask_iou as eval_iou
from swiftsam.everything.runner import list_images as everything_images
from swiftsam.masks import decode_rle, encode_mask, encode_rle, rle_area, rle_bbox, uncompressed_rle
from swiftsam.quant.ptq import calibration_images
from swiftsam.train.data import DistillImages, training_images
from swiftsam.train.losses import logits_iou
from swiftsam.utils import sha256_of


def test_sha256_of_reads_files_in_chunks(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (5 << 19) + 7, dtype=np.uint8).tobytes()  # 2.5 MiB + 7
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_of(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


# ------------------------------------------------------------------ the empty-mask IoU rule
def test_two_empty_masks_have_iou_one_in_evaluation_and_training():
    empty = np.zeros((8, 8), bool)
    assert eval_iou(empty, empty) == 1.0  # evaluation said 0.0, training 1.0
    assert logits_iou(torch.full((1, 8, 8), -3.0), torch.zeros(1, 8, 8)).tolist() == [1.0]
    full = ~empty
    assert eval_iou(empty, full) == 0.0
    assert logits_iou(torch.full((1, 8, 8), -3.0), torch.ones(1, 8, 8)).tolist() == [0.0]


def test_evaluation_and_training_iou_agree_on_random_masks():
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 16, 16)) > 0.6, rng.random((5, 16, 16)) > 0.3
    a[0] = b[0] = False  # one pair of empty masks
    by_eval = [eval_iou(x, y) for x, y in zip(a, b)]
    logits = torch.from_numpy(np.where(a, 2.0, -2.0)).float()
    by_training = logits_iou(logits, torch.from_numpy(b).float())
    expected = [1.0] + [np.logical_and(x, y).sum() / np.logical_or(x, y).sum() for x, y in zip(a[1:], b[1:])]
    assert by_eval == pytest.approx(expected, abs=1e-12)
    assert by_training.tolist() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ image listing
@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    pixels = Image.fromarray(np.full((8, 8, 3), 100, np.uint8))
    for name in ("a.jpg", "b.PNG", "c.webp", "d.tif", "e.bmp", "sub/f.jpeg"):
        pixels.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "dir.jpg").mkdir()  # a folder with an image suffix is not an image
    return folder


def test_everything_training_and_calibration_list_the_same_image_files(image_folder):
    top = ["a.jpg", "b.PNG", "c.webp", "d.tif", "e.bmp"]
    assert [p.name for p in everything_images(image_folder)] == top
    # training found only .jpg/.jpeg/.png, calibration no .tif: now one suffix set, searched recursively
    assert [p.name for p in training_images(image_folder)] == top + ["f.jpeg"]
    assert calibration_images(image_folder, 100) == training_images(image_folder)
    assert calibration_images(image_folder, 2) == training_images(image_folder)[:2]


def test_listing_errors_say_what_was_searched(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no .jpg or .png images \(nor .jpeg, .bmp, .webp, .tif, .tiff\) under"):
        training_images(tmp_path / "empty")
    with pytest.raises(InputError, match="give a folder of calibration images"):
        calibration_images(tmp_path / "empty", 4)
    with pytest.raises(InputError, match="calibration folder not found"):
        calibration_images(tmp_path / "nope", 4)
    with pytest.raises(InputError, match="neither an image file nor a folder"):
        everything_images(tmp_path / "nope")


# ------------------------------------------------------------------ COCO RLE
def test_rle_helpers_take_every_rle_form():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 12, 9)) > 0.5
    masks[2] = False
    masks[2, 3:5, 2:7] = True
    rles = encode_rle(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    assert [encode_mask(m) for m in masks] == rles  # one mask or a batch: the same RLE
    for m, r in zip(masks, rles):
        as_bytes = {"size": r["size"], "counts": r["counts"].encode("ascii")}  # as pycocotools returns it
        for form in (r, as_bytes, uncompressed_rle(m)):
            assert np.array_equal(decode_rle(form), m)
            assert rle_area(form) == int(m.sum())  # an uncompressed or bytes RLE broke rle_area before
            assert rle_bbox(form) == [float(v) for v in mask_utils.toBbox(as_bytes)]
    assert rle_bbox(rles[2]) == [2.0, 3.0, 5.0, 2.0]
    assert encode_rle(np.zeros((0, 4, 4), bool)) == []


# ------------------------------------------------------------------ pixel mean / std of training data
def test_distillation_images_are_normalised_with_each_models_pixel_mean_and_std(image_folder):
    sam = swiftsam.build("nanosam-r18", input_size=128).spec
    plain = dataclasses.replace(sam, input_size=64, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))
    data = DistillImages(image_folder, plain, sam, (1.0, 1.0), (1.0, 1.0), seed=0, views=None)
    item = data[(0, 0)]
    assert item["student"].shape == (3, 64, 64) and item["teacher"].shape == (3, 128, 128)
    assert torch.equal(item["student"], torch.full((3, 64, 64), 100.0))  # this model's mean 0, std 1
    sam_norm = (torch.full((3,), 100.0) - torch.tensor(sam.pixel_mean)) / torch.tensor(sam.pixel_std)
    assert torch.allclose(item["teacher"], sam_norm[:, None, None].expand(3, 128, 128), atol=1e-6)


def test_distill_encoder_recipe_gives_its_dataset_the_models_specs(tmp_path, image_folder):
    from swiftsam.train import TrainConfig
    from swiftsam.train.recipes import DistillEncoder

    cfg = TrainConfig(recipe="distill-encoder", student={"name": "nanosam-r18", "kwargs": {"input_size": 64}},
                      teacher={"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 96}},
                      images=str(image_folder), out=str(tmp_path / "run"), tensorboard=False)
    recipe = DistillEncoder(cfg, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    data = recipe.dataset()
    assert data.student == recipe.student.spec and data.teacher == recipe.teacher.spec
