"""SAM 2.1 image models against the authors' sam2==1.1.0 on the same random weights, through the public APIs.

The reference is built with ``apply_postprocessing=False`` (its hole filling needs its CUDA extension) plus the
dynamic-multimask settings ``apply_postprocessing`` would add, which the image predictor's single-mask output
uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam import Predictor
from swiftsam.modeling.sam2 import build_sam2

from .conftest import randomize_, test_image

sam2 = pytest.importorskip("sam2")

CONFIGS = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
PUBLISHED_PARAMS_M = {"tiny": 38.9, "small": 46.0, "base_plus": 80.8, "large": 224.4}
DYNAMIC = ["++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
           "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
           "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98"]


def reference(variant: str, ours: torch.nn.Module | None = None):
    """sam2's model for ``variant`` with the trunk of ``ours`` (reduced depth too), holding its weights."""
    from sam2.build_sam import build_sam2 as ref_build

    overrides = list(DYNAMIC)
    if ours is not None:
        trunk = ours.image_encoder.trunk
        overrides += [f"++model.image_encoder.trunk.stages=[{','.join(map(str, trunk.stages))}]",
                      f"++model.image_encoder.trunk.global_att_blocks=[{','.join(map(str, trunk.global_att_blocks))}]"]
    ref = ref_build(f"configs/sam2.1/sam2.1_hiera_{CONFIGS[variant]}.yaml", None, device="cpu",
                    hydra_overrides_extra=overrides, apply_postprocessing=False)
    if ours is not None:
        ref.load_state_dict(ours.state_dict(), strict=True)
    return ref.eval()


@pytest.fixture(scope="module")
def tiny_pair():
    ours = randomize_(swiftsam.build("sam2.1-hiera-tiny"), seed=3).eval()
    return ours, reference("tiny", ours)


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_keys_shapes_and_parameter_counts_equal_the_official_models(variant):
    with torch.device("meta"):
        ours = build_sam2(variant)
    theirs = reference(variant)
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    official = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert mine == official
    n = sum(p.numel() for p in ours.parameters()) / 1e6
    assert math.floor(n * 10) / 10 == PUBLISHED_PARAMS_M[variant], n  # published truncated to 0.1 M
    for prefix in ("image_encoder.trunk.", "image_encoder.neck.", "sam_mask_decoder.conv_s0.",
                   "sam_mask_decoder.obj_score_token.", "sam_mask_decoder.pred_obj_score_head.", "memory_attention.",
                   "memory_encoder.", "maskmem_tpos_enc"):
        assert any(k.startswith(prefix) for k in mine), prefix


def _compare_features_and_heads(ours, ref, image, atol=1e-4):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    theirs = SAM2ImagePredictor(ref)
    theirs.set_image(image)
    p = Predictor(ours, engine="torch")
    p.set_image(image)
    f = p.get_image_features()
    torch.testing.assert_close(f.embedding, theirs._features["image_embed"], atol=atol, rtol=0)
    for a, b in zip(f.high_res, theirs._features["high_res_feats"], strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    # mask logits, IoU and object scores of a click and a box, all four tokens, against sam2's own heads
    h, w = image.shape[:2]
    point, box = np.array([[w * 0.4, h * 0.6]]), np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    from swiftsam.prompts import PromptBatch

    for prompt in ({"point_coords": point[None], "point_labels": np.array([[1]])}, {"boxes": box[None]}):
        low, iou, obj = p.decode(PromptBatch.from_pixels(ours, (h, w), **prompt), object_scores=True)
        _, coords, labels, boxes = theirs._prep_prompts(prompt.get("point_coords"), prompt.get("point_labels"),
                                                        prompt.get("boxes"), None, True)
        if boxes is not None:
            coords, labels = boxes.reshape(-1, 2, 2), torch.tensor([[2, 3]], dtype=torch.int)
        with torch.inference_mode():
            sparse, dense = ref.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            for multi, tokens in ((True, slice(1, None)), (False, slice(0, 1))):
                m, s, _, o = ref.sam_mask_decoder.predict_masks(
                    theirs._features["image_embed"], ref.sam_prompt_encoder.get_dense_pe(), sparse, dense, False,
                    theirs._features["high_res_feats"])
                torch.testing.assert_close(low[:, tokens], m[:, tokens], atol=atol, rtol=0)
                torch.testing.assert_close(iou[:, tokens], s[:, tokens], atol=atol, rtol=0)
                torch.testing.assert_close(obj, o, atol=atol, rtol=0)
    return p, theirs


def test_tiny_at_full_size_matches_sam2(tiny_pair):
    _compare_features_and_heads(*tiny_pair, test_image(240, 320, seed=1))


def test_small_at_full_size_matches_sam2():
    ours = randomize_(swiftsam.build("sam2.1-hiera-small"), seed=5).eval()
    _compare_features_and_heads(ours, reference("small", ours), test_image(200, 150, seed=2))


@pytest.mark.parametrize("variant", ["base_plus", "large"])
def test_reduced_depth_base_plus_and_large_match_sam2(variant):
    ours = randomize_(build_sam2(variant, depth=(1, 1, 3, 1)), seed=6).eval()
    _compare_features_and_heads(ours, reference(variant, ours), test_image(160, 200, seed=3))


PROMPTS = [
    {"point_coords": np.array([[150.0, 100.0]]), "point_labels": np.array([1])},
    {"point_coords": np.array([[150.0, 100.0], [40.0, 200.0]]), "point_labels": np.array([1, 0])},
    {"box": np.array([30.0, 40.0, 260.0, 210.0])},
    {"point_coords": np.array([[120.0, 120.0]]), "point_labels": np.array([0]), "box": np.array([30.0, 40.0, 260.0, 210.0])},
]


@pytest.mark.parametrize("multimask", [True, False])
def test_predictor_parity_with_sam2_image_predictor(tiny_pair, multimask):
    """Points, box, points + box, then each again with the low-res logits of the first answer as mask input; masks,
    scores and (clamped) low-res logits as SAM2ImagePredictor returns them."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    ours, ref = tiny_pair
    image = test_image(240, 320, seed=4)
    p, theirs = Predictor(ours, engine="torch"), SAM2ImagePredictor(ref)
    p.set_image(image)
    theirs.set_image(image)
    for prompt in PROMPTS:
        with torch.inference_mode():
            want = theirs.predict(**prompt, multimask_output=multimask, return_logits=True)
        got = p.predict(**prompt, multimask_output=multimask, return_logits=True)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=0)
        mask_input = want[2][np.argmax(want[1])][None]
        with torch.inference_mode():
            want = theirs.predict(**prompt, mask_input=mask_input, multimask_output=multimask, return_logits=True)
        got = p.predict(**prompt, mask_input=mask_input, multimask_output=multimask, return_logits=True)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=0)
    # normalised coordinates (normalize_coords=False takes 0..1 of the image)
    with torch.inference_mode():
        want = theirs.predict(np.array([[0.5, 0.25]]), np.array([1]), normalize_coords=False, return_logits=True)
    got = p.predict(np.array([[0.5, 0.25]]), np.array([1]), normalize_coords=False, return_logits=True)
    np.testing.assert_allclose(got[0], want[0], atol=2e-4, rtol=0)


def test_batched_images_match_sam2_predict_batch(tiny_pair):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    ours, ref = tiny_pair
    images = [test_image(240, 320, seed=7), test_image(180, 120, seed=8)]
    p, theirs = Predictor(ours, engine="torch"), SAM2ImagePredictor(ref)
    p.set_image_batch(images)
    theirs.set_image_batch(images)
    points = [np.array([[[100.0, 80.0]]]), None]
    labels = [np.array([[1]]), None]
    boxes = [None, np.array([[10.0, 20.0, 100.0, 150.0]])]
    with torch.inference_mode():
        want = theirs.predict_batch(points, labels, boxes, multimask_output=True, return_logits=True)
    got = p.predict_batch(points, labels, boxes, multimask_output=True, return_logits=True)
    for got_list, want_list in zip(got, want):
        assert len(got_list) == len(want_list) == 2
        for a, b in zip(got_list, want_list):
            np.testing.assert_allclose(np.squeeze(a), np.squeeze(b), atol=2e-4, rtol=0)


def test_feature_sizes_follow_the_input_size():
    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=512), seed=9).eval()
    assert [f.size for f in model.contract.features] == [32, 128, 64]
    p = Predictor(model, engine="torch")
    p.set_image(test_image(100, 140))
    masks, scores, low = p.predict(box=np.array([10, 10, 90, 80]))
    assert masks.shape == (3, 100, 140) and low.shape == (3, 128, 128)
    assert np.abs(low).max() <= 32.0  # SAM 2's clamp of the returned logits


def test_embedding_file_keeps_the_high_res_levels(tiny_pair, tmp_path):
    ours, _ = tiny_pair
    p = Predictor(ours, engine="torch")
    image = test_image(120, 160, seed=10)
    p.set_image(image)
    p.save_embedding(tmp_path / "e.pt")
    q = Predictor(ours, engine="torch")
    q.load_embedding(tmp_path / "e.pt")
    for a, b in zip(p.get_image_features().levels, q.get_image_features().levels):
        assert torch.equal(a, b)
    prompt = {"point_coords": np.array([[50.0, 60.0]]), "point_labels": np.array([1])}
    assert all(np.array_equal(a, b) for a, b in zip(p.predict(**prompt), q.predict(**prompt)))
    with pytest.raises(swiftsam.InputError, match="3 feature level"):
        q.set_image_embedding(p.get_image_embedding(), (120, 160))


def test_onnx_export_runs_in_onnxruntime_and_reproduces_the_predictor(tmp_path):
    """encoder.onnx outputs image_embed + high_res_feats_0/1; decoder.onnx (batched) and sam_decoder.onnx (the
    interface SAM 2 ONNX consumers such as X-AnyLabeling load) take them; all within 1e-3 of torch fp32."""
    import onnxruntime as ort

    from swiftsam.export.onnx import export_onnx
    from swiftsam.prompts import PromptBatch

    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=256, depth=(1, 1, 2, 1)), seed=11).eval()
    export_onnx(model, tmp_path / "x")
    image = test_image(120, 160, seed=12)
    pt, po = Predictor(model, engine="torch"), Predictor.from_export(tmp_path / "x")
    pt.set_image(image)
    po.set_image(image)
    for a, b in zip(po.get_image_features().levels, pt.get_image_features().levels, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    for prompt in PROMPTS[:1] + [{"box": np.array([10.0, 10.0, 100.0, 90.0])}]:
        for a, b in zip(po.predict(**prompt, return_logits=True), pt.predict(**prompt, return_logits=True)):
            np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)
    session = ort.InferenceSession(str(tmp_path / "x" / "sam_decoder.onnx"))
    assert {i.name for i in session.get_inputs()} == {
        "image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input",
        "has_mask_input", "orig_im_size"}
    f = pt.get_image_features()
    batch = PromptBatch.from_pixels(model, (120, 160), np.array([[[50.0, 60.0]]]), np.array([[1]]))
    feed = {**{k: v.numpy() for k, v in f.as_dict(model.contract.features).items()},
            **{k: getattr(batch, k).numpy() for k in ("point_coords", "point_labels", "mask_input", "has_mask_input")},
            "orig_im_size": np.array([120, 160], np.float32)}
    masks, iou, _ = session.run(["masks", "iou_predictions", "low_res_masks"], feed)
    want = pt.predict(np.array([[50.0, 60.0]]), np.array([1]), return_logits=True)
    np.testing.assert_allclose(masks[0, 1:], want[0], atol=1e-3, rtol=0)
    np.testing.assert_allclose(iou[0, 1:], want[1], atol=1e-3, rtol=0)


def test_a_sam2_teacher_needs_a_student_with_its_feature_levels(tmp_path):
    """Distilling SAM 2.1 into a one-level SAM 1 student would train against the wrong target: a clear error."""
    from swiftsam.train.config import TrainConfig
    from swiftsam.train.recipes import DistillEncoder

    small = {"input_size": 128, "depth": [1, 1, 1, 1]}
    cfg = TrainConfig(recipe="distill-encoder", images=str(tmp_path), out=str(tmp_path / "run"),
                      teacher={"name": "sam2.1-hiera-tiny", "checkpoint": "random", "kwargs": small},
                      student={"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 128}})
    with pytest.raises(swiftsam.InputError, match="3 feature level.*image_embed.*student nanosam-r18 1"):
        DistillEncoder(cfg, torch.device("cpu"), lambda: None)


def test_exporting_leaves_the_model_in_eval_mode(tmp_path):
    from swiftsam.export.onnx import export_onnx

    model = swiftsam.build("sam2.1-hiera-tiny", input_size=128, depth=(1, 1, 1, 1)).eval()
    export_onnx(model, tmp_path / "x", parts=("encoder", "decoder"))
    assert not any(m.training for m in model.modules())  # a wrapper in training mode used to switch them all on


def test_openvino_engine_matches_torch():
    pytest.importorskip("openvino")
    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=256, depth=(1, 1, 2, 1)), seed=13).eval()
    image = test_image(120, 160, seed=14)
    pt, pv = Predictor(model, engine="torch"), Predictor(model, engine="openvino", precision="fp32")
    pt.set_image(image)
    pv.set_image(image)
    for a, b in zip(pv.get_image_features().levels, pt.get_image_features().levels, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    for prompt in PROMPTS[:1] + [{"box": np.array([10.0, 10.0, 100.0, 90.0])}]:
        for a, b in zip(pv.predict(**prompt, return_logits=True), pt.predict(**prompt, return_logits=True)):
            np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)
