"""One prompt path (issue 18): every caller builds its prompts as a ``PromptBatch``, decodes through
``Predictor.decode`` and keeps the outputs the one output policy chooses. The first tests are the drift
bugs the separate paths had: each failed before the paths were joined."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam import InputError, MaskGenerator, Predictor
from swiftsam.bench.workloads import SwiftsamWorkloads, example_boxes
from swiftsam.engines import get_engine
from swiftsam.image_io import load_image
from swiftsam.modeling.prompt_decoder import choose_outputs
from swiftsam.modeling.stages import DECODER_INPUTS, DECODER_OUTPUTS
from swiftsam.prompts import PromptBatch, box_prior_logits
from tests.conftest import SHARED, randomize_, test_image

VAL = SHARED / "coco-mini"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def tinysam_like():
    """A small random model whose single-mask token is untrained, as TinySAM's (multimask_only)."""
    model = randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=7).eval()
    model.multimask_only = True
    return model


def val_image_and_boxes(count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A held-out coco-mini val image (swiftsam's models never trained on it) and its largest objects' boxes."""
    if not (VAL / "annotations" / "instances_val2017.json").is_file():
        pytest.skip("shared coco-mini data not available")
    coco = json.loads((VAL / "annotations" / "instances_val2017.json").read_text())
    image = coco["images"][0]
    anns = sorted((a for a in coco["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")),
                  key=lambda a: -a["area"])[:count]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float64)
    return load_image(VAL / "val2017" / image["file_name"]), boxes


# ------------------------------------------------------------------------------------ the drift bugs
def test_box_strategy_decodes_with_the_models_box_prior():
    """The default model was trained with the box mask prior: everything mode's box prompts get it as
    predict(box=...) does, so the same box gives the same mask (it gave IoU ~0.24 without the prior)."""
    predictor = Predictor(engine="torch")
    assert predictor.model.box_mask_prior
    image, boxes = val_image_and_boxes()
    gen = MaskGenerator(predictor, strategy="boxes", pred_iou_thresh=0.0, stability_score_thresh=0.0,
                        box_nms_thresh=1.0)
    records = gen.generate(image, boxes=boxes)
    assert len(records) == len(boxes)
    predictor.set_image(image)
    for rec in records:
        mask, score, _ = predictor.predict(box=np.array(rec["prompt_box"]), multimask_output=False)
        assert iou(rec["segmentation"], mask[0]) > 0.99
        assert rec["predicted_iou"] == pytest.approx(float(score[0]), abs=1e-5)


def test_predict_best_single_follows_multimask_only(tinysam_like):
    """candidates="single" on a model whose single-mask token is untrained: the best of the three multimask
    outputs, as predict(multimask_output=False) gives (it took the untrained token 0)."""
    p = Predictor(tinysam_like, engine="torch")
    image = test_image(120, 160)
    p.set_image(image)
    boxes = np.array([[20, 30, 100, 90], [5, 5, 150, 110.0]])
    points, labels = np.array([[[60, 50]], [[120, 80.0]]]), np.ones((2, 1))
    best, best_scores = p.predict_best(boxes=boxes, candidates="single")
    best_pts, _ = p.predict_best(points, labels, candidates="single")
    for i in range(2):  # scores of a batch of 2 and of 1 prompt: equal up to float rounding of other GEMM shapes
        masks, scores, _ = p.predict(box=boxes[i], multimask_output=False)
        assert np.array_equal(best[i], masks[0]) and best_scores[i] == pytest.approx(float(scores[0]), rel=1e-5)
        assert best_scores[i] == pytest.approx(float(p.predict(box=boxes[i])[1].max()), rel=1e-5)  # best of 1..3
        masks, _, _ = p.predict(points[i], labels[i], multimask_output=False)
        assert np.array_equal(best_pts[i], masks[0])


def test_bench_pipeline_follows_the_output_policy(tinysam_like):
    """swiftsam bench's pipeline keeps what predict(box, multimask_output=False) keeps: for a multimask_only
    model the best of tokens 1..3 (it always took token 0)."""
    image = test_image(120, 160)
    boxes = example_boxes(2, image.shape[:2], seed=1)
    work = SwiftsamWorkloads(tinysam_like, get_engine("torch", tinysam_like))
    with torch.inference_mode():
        got = work.segment([image, image], boxes)
    p = Predictor(tinysam_like, engine="torch")
    p.set_image(image)
    for mask, box in zip(got, boxes):
        want = p.predict(box=box, multimask_output=False)[0][0]
        assert np.array_equal(mask.numpy(), want)


def test_mask_generator_leaves_the_callers_predictor_alone():
    """A Predictor passed to MaskGenerator keeps its own image: the generator encodes into a state of its own
    (it used to set_image / reset_image the caller's predictor, wiping their embedding)."""
    model = randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=2).eval()
    p = Predictor(model, engine="torch")
    mine = test_image(100, 140, seed=1)
    p.set_image(mine)
    embedding = p.get_image_embedding().clone()
    before = p.predict(box=np.array([10, 10, 90, 80]))
    gen = MaskGenerator(p, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert gen.generate(test_image(64, 80, seed=2))
    assert p.is_image_set and p.original_size == (100, 140)
    assert torch.equal(p.get_image_embedding(), embedding)
    after = p.predict(box=np.array([10, 10, 90, 80]))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert gen.predictor.engine is p.engine  # the same engine: no second model, no second export


# ---------------------------------------------------------------------------------- the one path
def test_prompt_batch_is_built_in_one_place_from_pixels():
    """Pixels -> prompt frame, box corners 2/3 after the clicks, one padding point for clicks without a box,
    the box prior for models trained with it, and predict's checks."""
    model = swiftsam.build("nanosam-r18", input_size=128)
    hw = (120, 160)  # prompt frame scale 1024 / 160 = 6.4
    clicks = PromptBatch.from_pixels(model, hw, point_coords=[[[10, 20], [30, 40]]], point_labels=[[1, 0]])
    assert clicks.point_coords.shape == (1, 3, 2) and clicks.point_labels.tolist() == [[1, 0, -1]]
    assert torch.allclose(clicks.point_coords[0, :2], torch.tensor([[64.0, 128.0], [192.0, 256.0]]))
    assert clicks.mask_input.shape == (1, 1, 256, 256) and clicks.has_mask_input.tolist() == [0.0]
    both = PromptBatch.from_pixels(model, hw, point_coords=[[[10, 20]]], point_labels=[[1]], boxes=[[0, 0, 80, 60]])
    assert both.point_labels.tolist() == [[1, 2, 3]]
    assert torch.allclose(both.point_coords[0, 1:], torch.tensor([[0.0, 0.0], [512.0, 384.0]]))
    assert both.has_mask_input.tolist() == [0.0]
    model.box_mask_prior = True
    prior = PromptBatch.from_pixels(model, hw, boxes=[[0, 0, 80, 60]])
    assert prior.has_mask_input.tolist() == [1.0]
    assert torch.equal(prior.mask_input, box_prior_logits(torch.tensor([[0.0, 0.0, 512.0, 384.0]]), 1024))
    given = np.full((1, 1, 256, 256), 2.0)
    kept = PromptBatch.from_pixels(model, hw, boxes=[[0, 0, 80, 60]], mask_input=given)
    assert (kept.mask_input == 2).all() and kept.has_mask_input.tolist() == [1.0]  # the caller's mask wins
    assert len(prior) == 1 and len(prior[0:1]) == 1 and prior.tensors()[1] is prior.point_labels
    with pytest.raises(InputError, match="outside"):
        PromptBatch.from_pixels(model, hw, boxes=[[0, 0, 800, 60]])
    with pytest.raises(InputError, match="point_labels must be"):
        PromptBatch.from_pixels(model, hw, point_coords=[[[1, 2]]], point_labels=[[2]])
    with pytest.raises(InputError, match="empty prompt"):
        PromptBatch.from_pixels(model, hw)
    with pytest.raises(InputError, match="differ in size"):
        PromptBatch.from_pixels(model, hw, point_coords=np.zeros((2, 1, 2)), point_labels=np.ones((2, 1)),
                                boxes=[[0, 0, 5, 5]])


def test_output_policy():
    low = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)
    iou = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.0, 0.2, 0.1, 0.7]])
    m_low, m_iou = choose_outputs(low, iou, "multimask", multimask_only=False)
    assert torch.equal(m_low, low[:, 1:]) and torch.equal(m_iou, iou[:, 1:])
    s_low, s_iou = choose_outputs(low, iou, "single", multimask_only=False)
    assert torch.equal(s_low, low[:, :1]) and s_iou.tolist() == [[pytest.approx(0.9)], [0.0]]
    t_low, t_iou = choose_outputs(low, iou, "single", multimask_only=True)  # untrained token 0: best of 1..3
    assert torch.equal(t_low[:, 0], low[[0, 1], [2, 3]]) and t_iou[:, 0].tolist() == pytest.approx([0.5, 0.7])
    b_low, _ = choose_outputs(low, iou, "all", multimask_only=False, best=True)
    assert torch.equal(b_low[:, 0], low[[0, 1], [0, 3]])
    b_low, _ = choose_outputs(low, iou, "multimask", multimask_only=False, best=True)
    assert torch.equal(b_low[:, 0], low[[0, 1], [2, 3]])
    with pytest.raises(InputError, match="'multimask', 'single' or 'all'"):
        choose_outputs(low, iou, "best", multimask_only=False)


def test_predictor_decode_is_the_engines_decode():
    """Predictor.decode: all four outputs of the engine for a PromptBatch, on the image set (or given features)."""
    model = randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=4).eval()
    p = Predictor(model, engine="torch")
    image = test_image(120, 160)
    with pytest.raises(InputError, match="no image set"):
        p.decode(PromptBatch.from_pixels(model, image.shape[:2], boxes=[[0, 0, 50, 50]]))
    p.set_image(image)
    batch = PromptBatch.from_pixels(model, image.shape[:2], boxes=[[0, 0, 50, 50], [10, 20, 150, 110]])
    low, iou = p.decode(batch)
    assert low.shape == (2, 4, 256, 256) and iou.shape == (2, 4)
    want = p.engine.decode(p.features, *batch.tensors())
    assert torch.equal(low, want[0]) and torch.equal(iou, want[1])
    torch.testing.assert_close(p.decode(batch, features=p.get_image_embedding().expand(2, -1, -1, -1))[0], low)
    with pytest.raises(InputError, match="PromptBatch"):
        p.decode((batch.point_coords, batch.point_labels))


def test_the_flat_prompt_abi_is_spelled_once():
    from swiftsam.export.onnx import DECODER_IO, SAM_DECODER_IO

    assert tuple(DECODER_IO[0]) == DECODER_INPUTS and tuple(DECODER_IO[1]) == DECODER_OUTPUTS
    assert tuple(SAM_DECODER_IO[0][:5]) == DECODER_INPUTS
    assert DECODER_INPUTS[1:] == tuple(f.name for f in __import__("dataclasses").fields(PromptBatch))


def test_sam_onnx_decoder_single_mask_follows_the_output_policy(tinysam_like):
    """SAM's published single-mask rule (token 0 beyond two points, else the best multimask output), except for a
    model whose token 0 is untrained: always the best of 1..3, as the Predictor."""
    from swiftsam.export.onnx import SamOnnxDecoder

    p = Predictor(tinysam_like, engine="torch")
    image = test_image(120, 160)
    p.set_image(image)
    batch = PromptBatch.from_pixels(tinysam_like, image.shape[:2], point_coords=[[[60, 50], [20, 20]]],
                                    point_labels=[[1, 0]])  # 3 points with the padding: SAM's rule takes token 0
    low, iou = p.decode(batch)
    size = torch.tensor([120.0, 160.0])
    with torch.inference_mode():
        _, got_iou, got_low = SamOnnxDecoder(tinysam_like, return_single_mask=True)(p.get_image_embedding(), *batch.tensors(), size)
        tinysam_like.multimask_only = False
        try:
            _, sam_iou, sam_low = SamOnnxDecoder(tinysam_like, return_single_mask=True)(
                p.get_image_embedding(), *batch.tensors(), size)
        finally:
            tinysam_like.multimask_only = True
    best = int(iou[0, 1:].argmax()) + 1
    assert torch.equal(got_low[0, 0], low[0, best]) and float(got_iou[0, 0]) == float(iou[0, best])
    assert torch.equal(sam_low[0, 0], low[0, 0]) and float(sam_iou[0, 0]) == float(iou[0, 0])
