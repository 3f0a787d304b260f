"""SAM 2.1 everywhere the SAM 1 families go beyond the Predictor: the bench reference (sam2's own predictor),
everything mode, COCO evaluation, the bf16 torch engine and PTQ of the image encoder. Each on a tiny
reduced-depth model at 256 px (random weights)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam import Predictor
from swiftsam.bench.workloads import SwiftsamWorkloads, example_boxes
from swiftsam.engines import get_engine

from .conftest import SHARED, randomize_, test_image

HAVE_SAM2 = importlib.util.find_spec("sam2") is not None
COCO = SHARED / "coco-mini"
IMAGES, ANNOTATIONS = COCO / "val2017", COCO / "annotations" / "instances_val2017.json"


def tiny_sam2(seed: int = 0) -> torch.nn.Module:
    return randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=256, depth=(1, 1, 2, 1)), seed=seed).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_sam2()


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.skipif(not HAVE_SAM2, reason="needs the reference package sam2")
def test_bench_reference_workloads_are_sam2s_predictor_on_the_same_weights(model):
    """The three workloads swiftsam bench --compare-reference times for the sam2 family compute what ours do."""
    from swiftsam.bench.reference import Sam2ReferenceWorkloads, reference_workloads, why_no_reference

    assert why_no_reference("sam2.1-hiera-small") is None
    ref = reference_workloads(model)
    assert isinstance(ref, Sam2ReferenceWorkloads) and ref.module == "sam2"
    mine = SwiftsamWorkloads(model, get_engine("torch", model))
    image = test_image(120, 160, seed=1)
    boxes = example_boxes(3, image.shape[:2], seed=4)
    with torch.inference_mode():
        x = model.preprocess(image)[0]
        features = model.forward_image(x)
        theirs = ref.encoder(torch.cat([x, x]))()  # [high_res_feats_0, high_res_feats_1, image_embed]
        for a, b in zip(features.levels, (theirs[2], theirs[0], theirs[1]), strict=True):
            torch.testing.assert_close(a[0], b[1], atol=1e-4, rtol=0)
        low, iou = mine.decoder(features, boxes, image.shape[:2])()
        ref_low, ref_iou = ref.decoder(features, boxes, image.shape[:2])()
        torch.testing.assert_close(low[:, 1:], ref_low, atol=1e-4, rtol=0)
        torch.testing.assert_close(iou[:, 1:], ref_iou, atol=1e-4, rtol=0)
        ours = mine.segment([image, image], boxes[:2])
        want = ref.pipeline([image, image], boxes[:2])()
    for m, r in zip(ours, want, strict=True):
        assert m.shape == image.shape[:2] and mask_iou(m.numpy(), np.asarray(r)[0] > 0) > 0.99


def test_bench_decoder_stage_runs_for_sam2(tmp_path):
    """The decoder cells decode against every feature level (SAM 2: three), not the encoder's raw output."""
    from swiftsam.bench import BenchConfig, run_bench

    config = BenchConfig(models=["sam2.1-hiera-tiny"], input_sizes=[128], stages=["decoder"], prompts=[2],
                         warmup=0, iterations=1)
    doc = run_bench(config, progress=False)
    assert not doc["skipped"], doc["skipped"]
    assert [(r["stage"], r["prompts"]) for r in doc["results"]] == [("decoder", 2)]


def _best_iou_against_predictor(predictor: Predictor, record: dict) -> float:
    """The record's mask against the Predictor's three multimask masks for the record's point: the best IoU."""
    masks, _, _ = predictor.predict(np.array(record["point_coords"]), np.array([1]), multimask_output=True)
    return max(mask_iou(record["segmentation"], m) for m in masks)


@pytest.mark.parametrize("strategy", ["grid", "hierarchical"])
def test_everything_mode_on_sam2_gives_the_predictors_masks(model, strategy):
    """Every mask everything mode keeps is one of the Predictor's multimask masks for its point (SAM 2's square
    geometry and per-axis point scaling, its 4x-smaller low-res logits), at the image's size."""
    from swiftsam.everything.generator import MaskGenerator

    image = test_image(120, 160, seed=1)
    predictor = Predictor(model, engine="torch")
    gen = MaskGenerator(predictor, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                        box_nms_thresh=1.0, strategy=strategy, sparse_factor=2, high_score_thresh=4.0)
    records = gen.generate(image)
    assert records and gen.stats.prompts <= 16
    predictor.set_image(image)
    for r in records[::5]:
        assert r["segmentation"].shape == image.shape[:2]
        assert _best_iou_against_predictor(predictor, r) > 0.99


@pytest.mark.skipif(not ANNOTATIONS.exists(), reason="needs ../shared/data/coco-mini")
def test_eval_coco_box_protocol_on_sam2(model, tmp_path):
    from swiftsam.eval import CocoImages, evaluate_coco
    from swiftsam.eval.coco import xywh_to_xyxy
    from swiftsam.eval.segmenters import PredictorSegmenter

    dataset = CocoImages(IMAGES, ANNOTATIONS)
    predictor = Predictor(model, engine="torch")
    summary = evaluate_coco(dataset, PredictorSegmenter(predictor), tmp_path, "box", limit=2, progress=False)
    first = sorted(dataset.image_ids)[0]
    anns = dataset.annotations(first)
    assert summary["images"] == 2 and summary["miou"]["all"]["count"] >= len(anns) > 0
    # the first image's rows, recomputed from the Predictor directly
    predictor.set_image(dataset.image(first))
    boxes = np.stack([xywh_to_xyxy(a["bbox"], dataset.size(first)) for a in anns])
    masks, _ = predictor.predict_best(boxes=boxes, candidates="all")
    rows = [r for r in summary_rows(tmp_path) if r["image_id"] == first]
    assert [r["ann_id"] for r in rows] == [a["id"] for a in anns]
    for r, m, a in zip(rows, masks, anns):
        assert r["iou"] == pytest.approx(mask_iou(m, np.asarray(dataset.gt_mask(a), bool)), abs=1e-6)


def summary_rows(folder) -> list[dict]:
    import json

    rows = []
    for path in sorted(folder.glob("results*.jsonl")):
        rows += [row for row in map(json.loads, path.read_text().splitlines()) if "ann_id" in row]
    return rows


def test_torch_engine_bf16_on_sam2(model, capsys):
    """The bf16 torch engine runs SAM 2 (encoder under autocast, heads in fp32); its masks are close to fp32's."""
    image = test_image(120, 160, seed=2)
    box = np.array([15.0, 10.0, 140.0, 100.0])
    fp32, bf16 = Predictor(model, engine="torch"), Predictor(model, engine=get_engine("torch", model, dtype="bf16"))
    fp32.set_image(image)
    bf16.set_image(image)
    assert all(t.dtype == torch.float32 for t in bf16.get_image_features().levels)
    a, b = fp32.predict(box=box)[0], bf16.predict(box=box)[0]
    ious = [mask_iou(x, y) for x, y in zip(a, b)]
    with capsys.disabled():
        print(f"\nsam2 tiny (reduced) bf16 vs fp32 mask IoU per output: {np.round(ious, 4).tolist()}")
    assert np.mean(ious) > 0.8  # loose: random weights, bf16's 8-bit mantissa


def test_ptq_quantizes_the_sam2_image_encoder(model):
    """quantize_torch swaps every Conv2d / Linear of SAM 2's image encoder (trunk and neck) for W8A8 fake-quant
    twins calibrated on images; the Predictor runs the quantized model, close to the float one."""
    import copy

    from swiftsam.modeling.quant.layers import quant_layers
    from swiftsam.quant.ptq import quantize_torch

    q = copy.deepcopy(model)
    float_layers = [n for n, mod in model.image_encoder.named_modules()
                    if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    calib = [model.preprocess(test_image(120, 160, seed=s))[0] for s in range(2)]
    quantize_torch(q, calib)
    assert sorted(quant_layers(q.image_encoder)) == sorted(float_layers)
    assert q.quantization["scheme"] == "w8a8"
    image = test_image(120, 160, seed=3)
    x = model.preprocess(image)[0]
    with torch.inference_mode():
        f, g = model.forward_image(x), q.forward_image(x)
    for a, b in zip(f.levels, g.levels, strict=True):
        err = (a - b).norm() / a.norm()
        assert 0 < err < 0.2, err  # quantized (not identical), and still close
    box = np.array([15.0, 10.0, 140.0, 100.0])
    pf, pq = Predictor(model, engine="torch"), Predictor(q, engine="torch")
    pf.set_image(image)
    pq.set_image(image)
    assert np.mean([mask_iou(x, y) for x, y in zip(pf.predict(box=box)[0], pq.predict(box=box)[0])]) > 0.8


def test_cached_position_embeddings_follow_the_weights_and_sizes():
    """Hiera's position embedding and the neck's sine encodings are kept between inference calls; a weight load, an
    in-place update or another size must not return a stale one."""
    model = tiny_sam2(seed=4)
    encoder = model.image_encoder
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        encoder(x)  # fills the caches
        other = tiny_sam2(seed=5)
        model.load_state_dict(other.state_dict())
        got = encoder(x)
        torch.testing.assert_close(got["vision_features"], other.image_encoder(x)["vision_features"], atol=0, rtol=0)
    with torch.no_grad():
        encoder.trunk.pos_embed.add_(1.0)
    with torch.inference_mode():
        want = encoder.trunk.position_embedding(64, 64)
        assert torch.equal(encoder.trunk._cached_position_embedding(64, 64), want)
        small = encoder(torch.randn(2, 3, 128, 128))
    for feat, pos in zip(small["backbone_fpn"], small["vision_pos_enc"]):
        assert pos.shape[0] == 2 and pos.shape[-2:] == feat.shape[-2:]
        torch.testing.assert_close(pos, encoder.neck.position_encoding(feat).to(feat.dtype), atol=0, rtol=0)
