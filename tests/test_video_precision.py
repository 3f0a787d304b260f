"""SAM 2 video in reduced precision and under torch.compile (``VideoPredictor`` / ``StreamingSession`` options
``dtype`` and ``compile``, implemented once in ``video.memory.Sam2Tracker``).

bf16 runs the image encoder, memory attention, mask decoder and memory encoder on a bfloat16 copy of the model;
its masks must agree with fp32's (mask IoU per object and frame: worst 0.985 measured on this model and video, fp16
0.997; the bound 0.97 leaves room for other CPUs' kernels and fails on a real break, not on rounding).
torch.compile takes tens of seconds per graph on a small shared CPU, so the compile test runs only with
SWIFTSAM_COMPILE_TESTS=1.
"""

from __future__ import annotations

import os

import pytest
import torch

from swiftsam.errors import InputError
from swiftsam.video import StreamingSession, VideoPredictor

from .conftest import small_sam2
from .test_video import tiny_video_model as tiny_model, video_frames as frames

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
MIN_IOU = 0.97


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def track(predictor: VideoPredictor, video) -> dict[int, torch.Tensor]:
    """Two objects (a click, a box) prompted on frame 0, tracked through the video: frame -> logits."""
    with torch.inference_mode():
        state = predictor.init_state(video)
        predictor.add_new_points_or_box(state, 0, 1, points=[[60, 50]], labels=[1])
        predictor.add_new_points_or_box(state, 0, 2, box=[100, 20, 170, 100])
        return {f: m.clone() for f, _, m in predictor.propagate_in_video(state)}


def ious(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Mask IoU per object of two logit tensors (objects x 1 x H x W); 1 where both masks are empty."""
    fa, fb = (a > 0).flatten(1), (b > 0).flatten(1)
    inter, union = (fa & fb).sum(1).float(), (fa | fb).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()


def test_bf16_masks_agree_with_fp32(model):
    video = frames()
    want = track(VideoPredictor(model, max_batch=None), video)
    got = track(VideoPredictor(model, max_batch=None, dtype="bf16"), video)
    assert got.keys() == want.keys()
    worst = min(min(ious(got[f], want[f])) for f in want)
    assert worst >= MIN_IOU, f"bf16 masks differ from fp32's: worst IoU {worst:.3f}"
    # bf16 did run: the logits are not fp32's (a tracker that ignored dtype would pass the IoU check trivially)
    assert max((got[f] - want[f]).abs().max().item() for f in want) > 1e-3
    assert all(m.dtype == torch.float32 for m in got.values())


def test_bf16_keeps_the_model_and_state_precision(model):
    p = VideoPredictor(model, dtype=torch.bfloat16)
    assert p.tracker.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in model.parameters())  # the user's model is not cast
    with torch.inference_mode():
        state = p.init_state(frames(3))
        p.add_new_points_or_box(state, 0, 1, points=[[60, 50]], labels=[1])
        list(p.propagate_in_video(state))
    obj = state.objects[1]
    out = obj.non_cond[2]
    assert out.pred_masks.dtype == out.obj_ptr.dtype == out.object_score_logits.dtype == torch.float32
    assert out.maskmem_features.dtype == torch.bfloat16  # as sam2 stores memories, in fp32 mode too
    assert state._features[2].vision.dtype == torch.float32


def test_bf16_streaming_agrees_with_fp32(model):
    video = frames(4)
    results = {}
    for dtype in ("fp32", "bf16"):
        s = StreamingSession(model, dtype=dtype)
        with torch.inference_mode():
            s.start(video[0])
            s.add_prompt(1, points=[[60, 50]], labels=[1])
            s.add_prompt(2, box=[100, 20, 170, 100])
            results[dtype] = [s.track(f)[1].clone() for f in video[1:]]
    for a, b in zip(results["bf16"], results["fp32"]):
        assert min(ious(a, b)) >= MIN_IOU
    assert max((a - b).abs().max().item() for a, b in zip(results["bf16"], results["fp32"])) > 1e-3


@pytest.mark.parametrize("bad", ["fp16", "float64", "", None, 16, torch.float16])
def test_bad_dtype_is_an_input_error(model, bad):
    with pytest.raises(InputError, match="dtype must be one of 'fp32', 'bf16'"):
        VideoPredictor(model, dtype=bad)
    with pytest.raises(InputError, match="dtype must be one of"):
        StreamingSession(model, dtype=bad)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_bad_compile_is_an_input_error(model, bad):
    with pytest.raises(InputError, match="compile must be True or False"):
        VideoPredictor(model, compile=bad)


compile_tests = pytest.mark.skipif(
    os.environ.get("SWIFTSAM_COMPILE_TESTS") != "1",
    reason="torch.compile takes 10-40 s per graph on this shared 2-core CPU; set SWIFTSAM_COMPILE_TESTS=1 to run",
)


def track_objects(predictor: VideoPredictor, video, n_obj: int) -> dict[int, torch.Tensor]:
    with torch.inference_mode():
        state = predictor.init_state(video)
        for i in range(n_obj):
            predictor.add_new_points_or_box(state, 0, i, points=[[30 + 40 * i, 40 + 10 * i]], labels=[1])
        return {f: m.clone() for f, _, m in predictor.propagate_in_video(state)}


@compile_tests
def test_compile_gives_eager_masks_and_does_not_recompile_per_frame():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = small_sam2()
    video = frames(6)
    eager = VideoPredictor(model, max_batch=None)
    compiled = VideoPredictor(model, max_batch=None, compile=True)
    for n_obj in (2, 3):
        want, got = track_objects(eager, video, n_obj), track_objects(compiled, video, n_obj)
        for f in want:
            torch.testing.assert_close(got[f], want[f], atol=1e-3, rtol=0)
        if n_obj == 2:
            graphs = counters["stats"]["unique_graphs"]
    # another object count and every frame's growing memory ran on the graphs compiled for the first session
    assert counters["stats"]["unique_graphs"] == graphs
