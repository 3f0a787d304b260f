"""Predictor: reference parity, transforms, batching, embeddings on disk, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam import InputError, Predictor
from swiftsam.transforms import from_prompt_frame, resized_shape, to_prompt_frame
from swiftsam.zoo.checkpoint import load_checkpoint
from tests.conftest import randomize_, test_image
from tests.reference_models import reference_efficientvit, reference_mobilesam


def paired_predictors(name, reference, predictor_cls, image, seed):
    """Our predictor and the authors' on the same random weights, both with ``image`` set."""
    ref = randomize_(reference, seed=seed).eval()
    ours = swiftsam.build(name)
    load_checkpoint(ours, swiftsam.get_entry(name), ref.state_dict(), "reference")
    p_ours, p_ref = Predictor(ours), predictor_cls(ref)
    p_ours.set_image(image)
    p_ref.set_image(image)
    return p_ours, p_ref


@pytest.fixture(scope="module")
def pair():
    """Our MobileSAM predictor and the authors' SamPredictor on the same random weights and image."""
    from mobile_sam import SamPredictor

    image = test_image(300, 420, seed=1)
    return (*paired_predictors("mobilesam", reference_mobilesam(), SamPredictor, image, 5), image)


PROMPTS = [
    dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[100.0, 50.0], [300.0, 250.0]]), point_labels=np.array([1, 0])),
    dict(box=np.array([50.0, 40.0, 300.0, 260.0])),
    dict(point_coords=np.array([[120.0, 90.0]]), point_labels=np.array([1]), box=np.array([60.0, 30.0, 400.0, 290.0])),
]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
@pytest.mark.parametrize("multimask", [True, False])
def test_matches_reference_predictor(pair, prompt, multimask):
    p_ours, p_ref, _ = pair
    assert torch.allclose(p_ours.get_image_embedding(), p_ref.get_image_embedding(), atol=1e-4)
    m1, s1, l1 = p_ours.predict(**PROMPTS[prompt], multimask_output=multimask)
    m2, s2, l2 = p_ref.predict(**PROMPTS[prompt], multimask_output=multimask)
    assert m1.shape == m2.shape == ((3 if multimask else 1), 300, 420)
    assert np.abs(s1 - s2).max() < 1e-4 and np.abs(l1 - l2).max() < 1e-4
    for a, b in zip(m1, m2):
        assert iou(a, b) >= 0.999
    # and the refined prediction from the low-res logits, as in SAM's interactive loop
    r1 = p_ours.predict(**PROMPTS[prompt], mask_input=l1[:1], multimask_output=False)
    r2 = p_ref.predict(**PROMPTS[prompt], mask_input=l2[:1], multimask_output=False)
    assert np.abs(r1[2] - r2[2]).max() < 1e-3


def test_efficientvit_predictor_matches_reference():
    from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

    image = test_image(300, 440, seed=2)
    p_ours, p_ref = paired_predictors("efficientvit-sam-l0", reference_efficientvit("l0"), EfficientViTSamPredictor,
                                      image, 6)
    for prompt in PROMPTS[:3]:
        m1, s1, l1 = p_ours.predict(**prompt)
        m2, s2, l2 = p_ref.predict(**prompt)
        assert np.abs(s1 - s2).max() < 1e-3 and np.abs(l1 - l2).max() < 1e-3
        assert all(iou(a, b) >= 0.99 for a, b in zip(m1, m2))


def test_coordinate_transforms_round_trip_and_match_reference():
    from segment_anything.utils.transforms import ResizeLongestSide

    rng = np.random.default_rng(0)
    for h, w in [(300, 420), (480, 640), (1000, 333), (77, 1500)]:
        pts = rng.uniform(0, [w, h], size=(10, 2))
        fwd = to_prompt_frame(pts, (h, w), 1024)
        assert np.allclose(from_prompt_frame(fwd, (h, w), 1024), pts)
        assert np.allclose(fwd, ResizeLongestSide(1024).apply_coords(pts, (h, w)))
        assert max(resized_shape(h, w, 1024)) == 1024


def test_predict_batch_equals_repeated_predict(pair):
    p, _, _ = pair
    boxes = np.array([[10, 10, 200, 150], [100, 80, 400, 290], [0, 0, 420, 300]], dtype=float)
    clicks = np.array([[[50, 50]], [[200, 200]], [[300, 100]]], dtype=float)
    labels = np.ones((3, 1))
    masks, scores, low = p.predict_batch(point_coords=clicks, point_labels=labels, boxes=boxes)
    assert masks.shape == (3, 3, 300, 420)
    for i in range(3):
        m, s, lo = p.predict(point_coords=clicks[i], point_labels=labels[i], box=boxes[i])
        assert np.abs(s - scores[i]).max() < 1e-5 and np.abs(lo - low[i]).max() < 1e-4
        assert all(iou(a, b) >= 0.999 for a, b in zip(m, masks[i]))


def test_embedding_round_trips_through_disk(pair, tmp_path):
    p, _, image = pair
    p.save_embedding(tmp_path / "emb.pt")
    fresh = Predictor(p.model)
    fresh.load_embedding(tmp_path / "emb.pt")
    assert fresh.original_size == image.shape[:2]
    assert torch.equal(fresh.features.embedding, p.features.embedding)  # the file keeps every bit
    for prompt in PROMPTS:
        (m1, s1, lo1), (m2, s2, lo2) = p.predict(**prompt), fresh.predict(**prompt)
        # two engine sessions on the same features: equal up to float rounding (not always bitwise)
        assert np.array_equal(m1, m2) and np.abs(s1 - s2).max() < 1e-5 and np.abs(lo1 - lo2).max() < 1e-4


def test_embedding_of_another_model_is_refused(pair, tmp_path):
    p, _, _ = pair
    p.save_embedding(tmp_path / "emb.pt")
    other = Predictor(swiftsam.build("tinysam"))
    with pytest.raises(InputError, match="computed by mobilesam, but this predictor runs tinysam"):
        other.load_embedding(tmp_path / "emb.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a swiftsam embedding file"):
        other.load_embedding(tmp_path / "junk.pt")


def test_images_from_paths_pil_gray_and_rgba_agree(pair, tmp_path):
    p, _, image = pair
    Image.fromarray(image).save(tmp_path / "im.png")
    p2 = Predictor(p.model)
    p2.set_image(str(tmp_path / "im.png"))
    assert torch.equal(p2.get_image_embedding(), p.get_image_embedding())
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    p2.set_image(Image.fromarray(rgba))
    assert torch.equal(p2.get_image_embedding(), p.get_image_embedding())
    gray = image[..., 0]
    p2.set_image(gray)
    p3 = Predictor(p.model)
    p3.set_image(np.stack([gray] * 3, axis=-1))
    assert torch.equal(p2.get_image_embedding(), p3.get_image_embedding())
    p2.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert torch.equal(p2.get_image_embedding(), p.get_image_embedding())


def test_tinysam_single_mask_request_returns_best_of_three():
    model = randomize_(swiftsam.build("tinysam"), seed=7)
    p = Predictor(model)
    p.set_image(test_image(200, 200))
    multi, scores, _ = p.predict(point_coords=np.array([[100, 100]]), point_labels=np.array([1]))
    single, score, _ = p.predict(point_coords=np.array([[100, 100]]), point_labels=np.array([1]), multimask_output=False)
    assert single.shape == (1, 200, 200)
    assert np.array_equal(single[0], multi[scores.argmax()]) and score[0] == scores.max()


# ------------------------------------------------------------------------------------- bad input
def test_bad_images(tmp_path, pair):
    p = Predictor(pair[0].model)
    with pytest.raises(InputError, match="image file not found"):
        p.set_image(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("this is text")
    with pytest.raises(InputError, match="not an image file that PIL can read"):
        p.set_image(tmp_path / "notes.jpg")
    with pytest.raises(InputError, match="zero size"):
        p.set_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(InputError, match="zero size"):
        p.set_image(Image.new("RGB", (0, 5)))
    with pytest.raises(InputError, match="must be H x W"):
        p.set_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(InputError, match="0..1"):
        p.set_image(np.random.rand(10, 10, 3))
    with pytest.raises(InputError, match="image_format"):
        p.set_image(np.zeros((10, 10, 3), np.uint8), image_format="HSV")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(), "empty prompt"),
        (dict(point_coords=np.array([[500.0, 10.0]]), point_labels=np.array([1])), "points outside the 420x300 image"),
        (dict(point_coords=np.array([[10.0, -1.0]]), point_labels=np.array([1])), "points outside"),
        (dict(point_coords=np.array([10.0, 10.0]), point_labels=np.array([1])), r"shape \(N, 2\)"),
        (dict(point_coords=np.array([[10.0, 10.0]])), "point_labels are required"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 1])), "point_labels must have shape"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([3])), "1 \\(foreground\\) or 0"),
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=[["a", "b"]], point_labels=[1]), "must be numeric"),
        (dict(point_labels=np.array([1])), "without point_coords"),
        (dict(box=np.array([10.0, 10.0, 500.0, 100.0])), "box outside the 420x300 image"),
        (dict(box=np.array([100.0, 10.0, 50.0, 100.0])), "x0 <= x1"),
        (dict(box=np.array([10.0, 10.0, 50.0])), r"shape \(4,\)"),
        (dict(box=np.array([10.0, 10.0, 50.0, 60.0]), mask_input=np.zeros((1, 64, 64))), "mask_input must have shape"),
    ],
)
def test_bad_prompts(pair, kwargs, message):
    with pytest.raises(InputError, match=message):
        pair[0].predict(**kwargs)


def test_predict_before_set_image():
    p = Predictor(swiftsam.build("mobilesam"))
    with pytest.raises(InputError, match="no image set"):
        p.predict(box=np.array([0, 0, 10, 10]))
    with pytest.raises(InputError, match="no image set"):
        p.save_embedding("x.pt")


def test_predict_batch_size_mismatch(pair):
    with pytest.raises(InputError, match="differ in size"):
        pair[0].predict_batch(point_coords=np.zeros((2, 1, 2)), point_labels=np.ones((2, 1)), boxes=np.array([[0, 0, 5, 5.0]]))


def test_box_mask_prior_enters_as_the_mask_input_of_box_prompts():
    from swiftsam.prompts import box_prior_logits

    prior = box_prior_logits(torch.tensor([[0.0, 0.0, 512.0, 256.0]]), prompt_size=1024)
    assert prior.shape == (1, 1, 256, 256)
    assert (prior[0, 0, :64, :128] == 4).all() and (prior[0, 0, 64:] == -4).all() and (prior[0, 0, :, 128:] == -4).all()
    model = randomize_(swiftsam.build("nanosam-r18", input_size=256), seed=3)
    image = test_image(120, 160)
    box = np.array([20, 30, 100, 90])
    p = Predictor(model, engine="torch")
    p.set_image(image)
    plain = p.predict(box=box, return_logits=True)[2]
    model.box_mask_prior = True
    with_prior = p.predict(box=box, return_logits=True)[2]
    frame = to_prompt_frame(box.reshape(2, 2).astype(np.float32), (120, 160), 1024).reshape(1, 4)
    explicit = p.predict(box=box, mask_input=box_prior_logits(torch.as_tensor(frame), 1024)[0].numpy(),
                         return_logits=True)[2]
    assert not np.allclose(plain, with_prior) and np.allclose(with_prior, explicit, atol=1e-5)
    # predict_best (the evaluation protocols) applies it too
    best_single = p.predict_best(boxes=box[None], candidates="single")[0][0]
    assert np.array_equal(best_single, p.predict(box=box, multimask_output=False)[0][0])
    points_only = p.predict(point_coords=np.array([[50, 50]]), point_labels=np.array([1]), return_logits=True)[2]
    model.box_mask_prior = False
    assert np.allclose(points_only, p.predict(point_coords=np.array([[50, 50]]), point_labels=np.array([1]),
                                              return_logits=True)[2])  # no box: no prior
