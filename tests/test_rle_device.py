"""COCO RLE encoding on the masks' device (masks.encode_rle_torch): the same bytes as pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from swiftsam.errors import InputError
from swiftsam.masks import decode_rle, encode_rle, encode_rle_torch
from tests.conftest import SHARED

COCO_VAL = SHARED / "coco-mini" / "annotations" / "instances_val2017.json"


def _same(masks: np.ndarray) -> list[dict]:
    """encode_rle_torch of ``masks`` as a tensor, checked against pycocotools (encode_rle on the array)."""
    want = encode_rle(masks)
    got = encode_rle_torch(torch.from_numpy(masks))
    assert got == want
    assert [list(r) for r in got] == [list(r) for r in want]  # same key order: the same JSON bytes
    return got


@pytest.mark.parametrize("shape", [(6, 1, 1), (5, 7, 3), (4, 3, 8), (3, 33, 17), (2, 64, 48), (1, 5, 1), (1, 1, 6)])
def test_random_masks_match_pycocotools(shape):
    rng = np.random.default_rng(sum(shape))
    for p in (0.02, 0.5, 0.9):
        _same(rng.random(shape) < p)


def test_empty_full_and_first_pixel_masks():
    masks = np.zeros((6, 9, 11), bool)
    masks[1] = True  # full: a zero run of length 0, then everything
    masks[2, 0, 0] = True  # the first pixel alone
    masks[3, :, 0] = True  # the first column
    masks[4, -1, -1] = True  # the last pixel alone
    masks[5, 0] = True  # the first row: one pixel at the top of every column
    rles = _same(masks)
    assert rles[0]["counts"] == encode_rle(np.zeros((1, 9, 11), bool))[0]["counts"]
    assert mask_utils.frPyObjects({"counts": [0, 99], "size": [9, 11]}, 9, 11)["counts"].decode() == rles[1]["counts"]
    _same(np.ones((1, 1, 1), bool)), _same(np.zeros((1, 1, 1), bool))
    assert encode_rle_torch(torch.zeros(0, 5, 5, dtype=torch.bool)) == []


def test_long_runs_with_negative_deltas():
    # counts of hundreds of thousands and count - count[i-2] < 0: several 5-bit groups and sign extension
    masks = np.zeros((3, 700, 650), bool)
    masks[0, :, :400] = True
    masks[1, 3:690, 2:640] = True
    masks[1, 0, 0] = True
    masks[2, 100:101, :] = True
    _same(masks)


def test_zero_one_and_non_contiguous_tensors():
    rng = np.random.default_rng(1)
    base = rng.random((4, 24, 30)) < 0.3
    want = encode_rle(base)
    t = torch.from_numpy(base)
    assert encode_rle_torch(t.to(torch.uint8)) == want
    assert encode_rle_torch(t.float()) == want
    hwn = t.permute(1, 2, 0).contiguous()  # stored H x W x N, viewed as N x H x W
    assert not hwn.permute(2, 0, 1).is_contiguous()
    assert encode_rle_torch(hwn.permute(2, 0, 1)) == want
    assert encode_rle_torch(t.transpose(1, 2)) == encode_rle(np.ascontiguousarray(base.transpose(0, 2, 1)))
    assert encode_rle_torch(t[::2, 1::3, ::2]) == encode_rle(np.ascontiguousarray(base[::2, 1::3, ::2]))
    assert encode_rle_torch(t[:1].expand(3, -1, -1)) == [want[0]] * 3


def test_round_trip_and_encode_rle_takes_tensors():
    rng = np.random.default_rng(2)
    masks = rng.random((5, 19, 23)) < 0.4
    masks[0] = False
    t = torch.from_numpy(masks)
    rles = encode_rle_torch(t)
    for m, r in zip(masks, rles):
        assert isinstance(r["counts"], str)
        assert np.array_equal(decode_rle(r), m)
    assert encode_rle(t) == rles  # a tensor goes to encode_rle as it is
    assert encode_rle(t[:0]) == []


@pytest.mark.skipif(not COCO_VAL.exists(), reason="needs ../shared/data/coco-mini")
def test_real_coco_masks():
    data = json.loads(COCO_VAL.read_text())
    images = {im["id"]: im for im in data["images"]}
    polygons = [a for a in data["annotations"] if not a["iscrowd"]]
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    picked = sorted(polygons, key=lambda a: -a["area"])[:2] + crowd[:1]
    for ann in picked:
        im = images[ann["image_id"]]
        h, w = im["height"], im["width"]
        rle = mask_utils.frPyObjects(ann["segmentation"], h, w)
        rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
        mask = mask_utils.decode(rle).astype(bool)
        assert mask.any() and not mask.all()
        got = _same(mask[None])[0]
        assert got["counts"].encode() == rle["counts"]  # pycocotools' own RLE of the annotation
        assert np.array_equal(decode_rle(got), mask)


def test_only_the_strings_leave_the_device(monkeypatch):
    """The full masks are never copied to the host: what crosses is smaller than one mask."""
    masks = torch.zeros(8, 120, 160, dtype=torch.bool)
    for i in range(8):
        masks[i, 10 + i: 60 + 5 * i, 20: 30 + 10 * i] = True
    moved = []
    for name in ("cpu", "numpy", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, **kwargs):
            moved.append(self.numel())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    rles = encode_rle_torch(masks)
    monkeypatch.undo()
    assert rles == encode_rle(masks.numpy())
    assert moved and max(moved) < 120 * 160 // 10


def test_bad_shape_is_a_clear_error():
    with pytest.raises(InputError, match=r"N x H x W.*mask\[None\]"):
        encode_rle_torch(torch.zeros(4, 4, dtype=torch.bool))
