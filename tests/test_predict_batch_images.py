"""predict_batch after set_image_batch: the prompts of all images in one decoder call per prompt shape, with the
results of decoding each image alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import swiftsam
import swiftsam.predictor as predictor_module
from swiftsam import InputError, Predictor
from tests.conftest import randomize_, test_image

IMAGES = [(240, 320), (180, 120), (300, 300), (100, 400)]


@pytest.fixture(scope="module", params=["nanosam-r18", "sam2.1-hiera-tiny"])
def model(request):
    size = {"nanosam-r18": 256, "sam2.1-hiera-tiny": 256}[request.param]
    return randomize_(swiftsam.build(request.param, input_size=size), seed=3).eval()


def prompts_per_image(model):
    """Per image: a box; three boxes; two prompts of two clicks; a box with a mask input."""
    g = np.random.default_rng(0)
    mask = g.normal(size=(1, *model.contract.mask_input_size)).astype(np.float32)
    return {
        "point_coords": [None, None, np.array([[[50.0, 40.0], [60.0, 90.0]], [[200.0, 100.0], [20.0, 30.0]]]), None],
        "point_labels": [None, None, np.array([[1, 0], [1, 1]]), None],
        "boxes": [np.array([10.0, 20.0, 200.0, 150.0]), np.array([[5, 5, 60, 90], [30, 40, 110, 170], [0, 0, 119, 179.0]]),
                  None, np.array([[40.0, 10.0, 300.0, 90.0]])],
        "mask_input": [None, None, None, mask],
    }


def one_by_one(p: Predictor, images, prompts, **kw):
    out = ([], [], [])
    for i, image in enumerate(images):
        p.set_image(image)
        args = {k: v[i] for k, v in prompts.items()}
        several = args["point_coords"] is not None and args["point_coords"].ndim == 3 or (
            args["boxes"] is not None and args["boxes"].ndim == 2 and len(args["boxes"]) > 1)
        if several:
            res = p.predict_batch(args["point_coords"], args["point_labels"], args["boxes"], args["mask_input"], **kw)
        else:
            box = None if args["boxes"] is None else args["boxes"].reshape(4)
            res = p.predict(args["point_coords"], args["point_labels"], box, args["mask_input"], **kw)
        for acc, r in zip(out, res):
            acc.append(r)
    return out


@pytest.mark.parametrize("multimask", [True, False])
def test_one_call_per_prompt_shape_equals_image_by_image(model, multimask, monkeypatch):
    images = [test_image(h, w, seed=i) for i, (h, w) in enumerate(IMAGES)]
    prompts = prompts_per_image(model)
    p = Predictor(model, engine="torch")
    want = one_by_one(p, images, prompts, multimask_output=multimask, return_logits=True)
    p.set_image_batch(images)
    calls = []
    decode = p.engine.decode
    monkeypatch.setattr(p.engine, "decode", lambda f, *a: calls.append(len(a[0])) or decode(f, *a))
    got = p.predict_batch(prompts["point_coords"], prompts["point_labels"], prompts["boxes"], prompts["mask_input"],
                          multimask_output=multimask, return_logits=True)
    # SAM 1: boxes (images 0, 1, 3: 5 prompts, one call) and two clicks (image 2: 2 prompts, with SAM's padding
    # point) differ in token count; SAM 2 pads no click prompt, so all 7 prompts go in one call
    assert sorted(calls) == ([7] if model.contract.object_score else [2, 5])
    for got_list, want_list in zip(got, want):
        assert len(got_list) == len(want_list) == len(images)
        for a, b in zip(got_list, want_list):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    # the default thresholded masks: the same as the logits > threshold of each image alone
    masks, _, _ = p.predict_batch(prompts["point_coords"], prompts["point_labels"], prompts["boxes"],
                                  prompts["mask_input"], multimask_output=multimask)
    for m, logits in zip(masks, want[0]):
        assert m.dtype == bool and m.shape == logits.shape
        assert (m != (logits > model.mask_threshold)).mean() < 1e-4  # only pixels at the threshold may flip


def test_chunked_calls_give_the_same(model, monkeypatch):
    images = [test_image(h, w, seed=i) for i, (h, w) in enumerate(IMAGES)]
    prompts = prompts_per_image(model)
    p = Predictor(model, engine="torch")
    p.set_image_batch(images)
    whole = p.predict_batch(**prompts, return_logits=True)
    monkeypatch.setattr(predictor_module, "IMAGE_BATCH_PROMPTS", 2)
    chunked = p.predict_batch(**prompts, return_logits=True)
    for a_list, b_list in zip(whole, chunked):
        for a, b in zip(a_list, b_list):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    # the first image stays set for predict
    assert p.original_size == IMAGES[0]


def test_bad_image_batch_prompts(model):
    p = Predictor(model, engine="torch")
    p.set_image_batch([test_image(64, 80), test_image(50, 50, seed=1)])
    with pytest.raises(InputError, match="box_batch has 1 entries for 2 images"):
        p.predict_batch(boxes=[np.array([0, 0, 10, 10.0])])
    with pytest.raises(InputError, match="empty prompt"):
        p.predict_batch(boxes=[np.array([0, 0, 10, 10.0]), None])
    with pytest.raises(InputError):
        p.predict_batch(boxes=[np.array([0, 0, 10, 10.0]), np.array([0, 0, float("nan"), 10.0])])
    for bad in (np.zeros((0, 4)), np.zeros(3)):
        with pytest.raises(InputError, match="box must have shape"):
            p.predict_batch(boxes=[bad, np.array([0, 0, 10, 10.0])])
    with pytest.raises(InputError, match=r"point_coords_batch\[0\] must be numeric"):
        p.predict_batch([[["a", "b"]], None], [[1], None], [None, np.array([0, 0, 10, 10.0])])
    with pytest.raises(InputError, match="image 1 of the batch has no prompt"):
        p.predict_batch([np.array([[[5.0, 5.0]]]), np.zeros((0, 1, 2))], [np.array([[1]]), np.zeros((0, 1))])


def test_engine_prompt_limit_and_one_image_chunks(model, monkeypatch):
    """Chunks follow an engine's prompt limit (TensorRT's profile); a chunk of one image's prompts decodes against
    that image's own features (no per-prompt copy)."""
    images = [test_image(h, w, seed=i) for i, (h, w) in enumerate(IMAGES[:2])]
    boxes = [np.array([[5, 5, 60, 90], [30, 40, 110, 170], [0, 0, 100, 150.0]]), np.array([[5, 5, 60, 90.0]] * 3)]
    p = Predictor(model, engine="torch")
    p.set_image_batch(images)
    want = p.predict_batch(boxes=boxes, return_logits=True)
    calls = []
    decode = p.engine.decode
    monkeypatch.setattr(p.engine, "decode", lambda f, *a: calls.append((len(a[0]), f.embedding.shape[0])) or decode(f, *a))
    monkeypatch.setattr(p.engine, "max_prompts", 3, raising=False)
    got = p.predict_batch(boxes=boxes, return_logits=True)
    assert calls == [(3, 1), (3, 1)]
    for a_list, b_list in zip(got, want):
        for a, b in zip(a_list, b_list):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
