"""SAM 2.1 video (swiftsam.video) against the authors' SAM2VideoPredictor (sam2==1.1.0) on the same random weights:
a reduced-depth hiera-tiny at 256 px, a few small frames. The reference is built with ``apply_postprocessing=False``
plus the post-processing flags it would set that run on a CPU (dynamic multimask, binarised click masks for the
memory; its hole filling needs its CUDA extension, so it is off in both). The object-score head's last bias is
raised by 2 so that random weights give objects that are present (scores near 0 would make presence a coin toss)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam.errors import InputError
from swiftsam.video import VideoPredictor

from .conftest import randomize_, small_sam2, test_image

H, W, N = 120, 176, 5  # video size and frames
ATOL = 1e-3
SAM2_FLAGS = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
]


def video_frames(n: int = N, seed: int = 0) -> list[np.ndarray]:
    """A drifting textured background with a bright square moving across it."""
    base = test_image(H, W + 8 * n, seed=seed)
    frames = []
    for i in range(n):
        f = np.ascontiguousarray(base[:, 8 * i : 8 * i + W]).copy()
        y, x = 30 + 3 * i, 40 + 10 * i
        f[y : y + 40, x : x + 50] = (230, 200, 40)
        frames.append(f)
    return frames


def tiny_video_model(seed: int = 3):
    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=128, depth=(1, 1, 2, 1)), seed=seed).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    return tiny_video_model()


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    for i, f in enumerate(video_frames()):
        Image.fromarray(f).save(d / f"{i:05d}.jpg", quality=95)
    return d


def reference(model):
    pytest.importorskip("sam2")
    from sam2.build_sam import build_sam2_video_predictor

    trunk = model.image_encoder.trunk
    flags = SAM2_FLAGS + [f"++model.image_size={model.contract.image.input_size}",
                          f"++model.image_encoder.trunk.stages=[{','.join(map(str, trunk.stages))}]",
                          f"++model.image_encoder.trunk.global_att_blocks=[{','.join(map(str, trunk.global_att_blocks))}]"]
    ref = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                                     hydra_overrides_extra=flags, apply_postprocessing=False)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        a, b = got[k], want[k]
        assert a.shape == b.shape, k
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        inter = ((a > 0) & (b > 0)).sum().item()
        union = ((a > 0) | (b > 0)).sum().item()
        assert union == 0 or inter / union >= 0.99, k


def scenario_points_box_correction(p, video):
    """Object 1 by a click, object 2 by a box on frame 0; track 3 frames; a negative correction click for object 1
    on frame 2 (added to its clicks there), track on to the end."""
    out = {}
    state = p.init_state(video)
    out["click"] = p.add_new_points_or_box(state, 0, 1, points=[[70, 50]], labels=[1])[2].clone()
    out["box"] = p.add_new_points_or_box(state, 0, 2, box=[30, 20, 120, 90])[2].clone()
    for f, ids, masks in p.propagate_in_video(state, max_frame_num_to_track=2):
        assert list(ids) == [1, 2]
        out[f"a{f}"] = masks.clone()
    out["fix"] = p.add_new_points_or_box(state, 2, 1, points=[[100, 60]], labels=[0], clear_old_points=False)[2].clone()
    for f, _, masks in p.propagate_in_video(state, start_frame_idx=2):
        out[f"b{f}"] = masks.clone()
    return out


def scenario_reverse(p, video):
    """Prompts on the last frame, tracked backwards to frame 0."""
    out = {}
    state = p.init_state(video)
    p.add_new_points_or_box(state, N - 1, "a", points=[[90, 60], [20, 20]], labels=[1, 0])
    out["prompt"] = p.add_new_points_or_box(state, N - 1, "b", box=[60, 30, 150, 100])[2].clone()
    for f, _, masks in p.propagate_in_video(state, reverse=True):
        out[f"r{f}"] = masks.clone()
    return out


def scenario_mask_clear_remove(p, video, mask):
    """A mask prompt and a click object on frame 0, tracking; a second click for the click object on frame 2, then
    cleared; the click object removed; tracking goes on."""
    out = {}
    state = p.init_state(video)
    out["mask"] = p.add_new_mask(state, 0, 5, mask)[2].clone()
    p.add_new_points_or_box(state, 0, 6, points=[[120, 70]], labels=[1])
    for f, _, masks in p.propagate_in_video(state, max_frame_num_to_track=2):
        out[f"a{f}"] = masks.clone()
    out["click2"] = p.add_new_points_or_box(state, 2, 6, points=[[60, 40]], labels=[1])[2].clone()
    out["cleared"] = p.clear_all_prompts_in_frame(state, 2, 6)[2].clone()
    ids, updated = p.remove_object(state, 6)
    assert list(ids) == [5] and [f for f, _ in updated] == [0]  # its prompts on frame 2 were cleared
    out["removed"] = updated[0][1].clone()
    for f, _, masks in p.propagate_in_video(state, start_frame_idx=1):
        out[f"b{f}"] = masks.clone()
    return out


@pytest.fixture(scope="module")
def ref(model):
    return reference(model)


def run_both(model, ref, scenario, *args, add_all_frames_to_correct_as_cond=False):
    ref.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
    with torch.inference_mode():
        want = scenario(ref, *args)
    ours = VideoPredictor(model, add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond, max_batch=None)
    got = scenario(ours, *args)  # every object of a frame in one batch
    return got, want


def test_points_box_two_objects_and_correction_match_sam2(model, ref, jpeg_dir):
    got, want = run_both(model, ref, scenario_points_box_correction, str(jpeg_dir),
                         add_all_frames_to_correct_as_cond=True)
    assert_same(got, want)
    assert (want["a1"] > 0).any() and (want["b4"] > 0).any()  # objects are tracked, not all absent


def test_correction_as_non_conditioning_frame_matches_sam2(model, ref, jpeg_dir):
    got, want = run_both(model, ref, scenario_points_box_correction, str(jpeg_dir))
    assert_same(got, want)


def test_reverse_tracking_matches_sam2(model, ref, jpeg_dir):
    got, want = run_both(model, ref, scenario_reverse, str(jpeg_dir))
    assert_same(got, want)
    assert (want["r0"] > 0).any()


def test_mask_prompt_clear_and_remove_match_sam2(model, ref, jpeg_dir):
    mask = np.zeros((H, W), bool)
    mask[30:70, 40:90] = True
    got, want = run_both(model, ref, scenario_mask_clear_remove, str(jpeg_dir), mask)
    assert_same(got, want)


def track_three(p, video):
    """Three objects whose memories differ in length on every frame (prompts on frames 0 and 1)."""
    state = p.init_state(video)
    p.add_new_points_or_box(state, 0, "a", points=[[70, 50]], labels=[1])
    p.add_new_points_or_box(state, 0, "b", box=[30, 20, 120, 90])
    p.add_new_points_or_box(state, 1, "c", points=[[120, 70], [20, 100]], labels=[1, 0])
    return {f: m.clone() for f, _, m in p.propagate_in_video(state)}


def test_objects_in_one_batch_equal_one_at_a_time(model):
    frames = video_frames()
    batched = track_three(VideoPredictor(model, max_batch=None), frames)
    single = track_three(VideoPredictor(model, max_batch=1), frames)
    assert batched.keys() == single.keys() == set(range(N))
    for f in batched:
        torch.testing.assert_close(batched[f], single[f], atol=1e-4, rtol=0)
    assert all((m > 0).any() for m in batched[N - 1])


def test_batched_padding_is_masked_out(model):
    """Two objects whose memories differ in length, padded into one batch, give each object's unpadded result."""
    p = VideoPredictor(model)
    t = p.tracker
    state = p.init_state(video_frames(3))
    p.add_new_points_or_box(state, 0, "a", points=[[70, 50]], labels=[1])
    list(p.propagate_in_video(state, max_frame_num_to_track=1))
    p.add_new_points_or_box(state, 1, "b", points=[[120, 70]], labels=[1])  # an object added mid-video
    p.propagate_in_video_preflight(state)
    with torch.inference_mode():
        feats = p._features(state, 2)
        specs = [t.select_memory(2, o.cond, o.non_cond, state.num_frames, False) for o in state.objects.values()]
        assert len(specs[0].spatial) == 2 and len(specs[1].spatial) == 1
        memory, _, mask, _ = t.pack(specs, *feats.vision.shape[-2:])
        assert mask is not None and not mask.all()
        together = t.condition(feats, specs)
        alone = torch.cat([t.condition(feats, [s]) for s in specs])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


def test_streaming_session_equals_offline_predictor(model):
    """Prompts on frame 0, a correction click and a new object mid-stream, an object removed: the streaming session
    (fixed-capacity memory) gives the offline predictor's masks on every frame."""
    from swiftsam.video import StreamingSession

    n = 7
    frames = video_frames(n, seed=1)
    opts = {"max_obj_ptrs_in_encoder": n}  # sam2 caps the pointer window at the video's length; a stream has none
    s = StreamingSession(model, **opts)
    s.start(frames[0])
    got = {}
    s.add_prompt(1, points=[[70, 50]], labels=[1])
    got[0] = s.add_prompt(2, box=[30, 20, 120, 90])[1]
    for f in (1, 2, 3):
        got[f] = s.track(frames[f])[1]
    s.add_prompt(1, points=[[100, 60]], labels=[0])  # a correction of a tracked object
    ids, got["3p"] = s.add_prompt(3, points=[[140, 90]], labels=[1])  # a new object mid-stream
    assert ids == [1, 2, 3]
    for f in (4, 5):
        got[f] = s.track(frames[f])[1]
    assert s.remove(2) == [1, 3]
    got[6] = s.track(frames[6])[1]

    p = VideoPredictor(model, add_all_frames_to_correct_as_cond=True, **opts)
    state = p.init_state(frames)
    want = {}
    p.add_new_points_or_box(state, 0, 1, points=[[70, 50]], labels=[1])
    p.add_new_points_or_box(state, 0, 2, box=[30, 20, 120, 90])
    want.update({f: m for f, _, m in p.propagate_in_video(state, max_frame_num_to_track=3)})
    p.add_new_points_or_box(state, 3, 1, points=[[100, 60]], labels=[0])
    want["3p"] = p.add_new_points_or_box(state, 3, 3, points=[[140, 90]], labels=[1])[2]
    want.update({f: m for f, _, m in p.propagate_in_video(state, start_frame_idx=4, max_frame_num_to_track=1)})
    p.remove_object(state, 2)
    want.update({f: m for f, _, m in p.propagate_in_video(state, start_frame_idx=6)})
    assert got.keys() == want.keys()
    for k in want:
        # float rounding only (the padded memory and the decoder's batch layout differ), carried over 7 frames
        torch.testing.assert_close(got[k], want[k], atol=1e-3, rtol=0, msg=lambda m, k=k: f"frame {k}: {m}")
        assert bool((((got[k] > 0) == (want[k] > 0)) | (want[k].abs() < 1e-3)).all()), f"frame {k}: masks differ"
    assert (got[6] > 0).any()


def test_streaming_evicts_old_prompted_frames_as_sam2_limits_them():
    """More prompted frames than ``max_cond_frames``: the oldest leave the conditioning slots (and stay ordinary
    memories while recent), as sam2's ``max_cond_frames_in_attn`` selects them."""
    from swiftsam.video import StreamingSession

    model, n = small_sam2(), 8
    frames = video_frames(n, seed=2)
    opts = {"max_obj_ptrs_in_encoder": n, "max_cond_frames_in_attn": 2}
    s = StreamingSession(model, max_cond_frames=2, max_obj_ptrs_in_encoder=n)
    p = VideoPredictor(model, add_all_frames_to_correct_as_cond=True, **opts)
    state = p.init_state(frames)
    s.start(frames[0])
    clicks = {0: [[70, 50]], 1: [[60, 40]], 2: [[90, 60]], 4: [[80, 55]]}
    got, want = {}, {}
    for f in range(n):
        if f:
            got[f] = s.track(frames[f])[1]
            want[f] = next(iter(p.propagate_in_video(state, start_frame_idx=f, max_frame_num_to_track=0)))[2]
        if f in clicks:
            got[f, "p"] = s.add_prompt(7, points=clicks[f], labels=[1])[1]
            want[f, "p"] = p.add_new_points_or_box(state, f, 7, points=clicks[f], labels=[1])[2]
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert int(s.objects[7].cond_mem.valid.sum()) == 2


def test_streaming_memory_stays_flat_over_2000_frames():
    """Objects added and removed, correction clicks, 2,000 frames: the session's tensors keep their size and the
    process's RSS after 2,000 frames is within 5% of that after 100."""
    import gc

    from swiftsam.video import StreamingSession

    def rss() -> int:  # resident set size from /proc (Linux; CI and this machine), no psutil needed
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm (Linux) to read the process's RSS")

    s = StreamingSession(small_sam2())
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
    s.start(frames[0])
    s.add_prompt(1, points=[[30, 20]], labels=[1])
    s.add_prompt(2, box=[5, 5, 40, 30])
    for f in range(1, 2001):
        ids, masks = s.track(frames[f % 8])
        assert masks.shape == (len(ids), 1, 48, 64)
        if f % 150 == 0:
            s.add_prompt(1, points=[[20 + f % 30, 20]], labels=[0])  # a correction: a new prompted frame
        if f == 500:
            s.add_prompt(3, points=[[50, 30]], labels=[1])
        if f == 900:
            s.remove(3)
        if f == 100:
            gc.collect()
            rss_100, bytes_100 = rss(), s.tensor_bytes()
    gc.collect()
    assert s.tensor_bytes() == bytes_100
    assert rss() <= 1.05 * rss_100


def _track_small(model, video) -> list[torch.Tensor]:
    p = VideoPredictor(model)
    state = p.init_state(video)
    p.add_new_points_or_box(state, 0, 1, points=[[70, 50]], labels=[1])
    out = [m for _, _, m in p.propagate_in_video(state)]
    assert len(state._features) <= 2  # only the latest frames' features are kept, never the video as tensors
    return out


def test_frames_are_read_on_demand_from_every_source(tmp_path, jpeg_dir):
    cv2 = pytest.importorskip("cv2")
    from swiftsam.video.frames import InMemoryFrames, open_video

    model = small_sam2()
    decoded = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(jpeg_dir.glob("*.jpg"))]
    want = _track_small(model, str(jpeg_dir))
    for video in (decoded, np.stack(decoded), (f for f in decoded)):
        for a, b in zip(_track_small(model, video), want, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    src = open_video(iter(decoded))
    assert isinstance(src, InMemoryFrames) and all(f.dtype == np.uint8 for f in src.frames)
    # a video file: decoded on demand (sequential reads and seeks give the same frames)
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    for f in decoded:
        writer.write(f[:, :, ::-1])
    writer.release()
    video = open_video(path)
    assert (len(video), video.height, video.width) == (N, H, W)
    frames = [video[i] for i in range(N)]
    assert all(np.array_equal(video[i], frames[i]) for i in (3, 1, 4))
    for a, b in zip(_track_small(model, str(path)), _track_small(model, frames), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_inputs_get_clear_errors(tmp_path):
    from swiftsam.video import StreamingSession

    model = small_sam2()
    with pytest.raises(InputError, match="not a video model"):
        VideoPredictor(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="unknown VideoPredictor option"):
        VideoPredictor(model, no_such_flag=1)
    with pytest.raises(InputError, match="max_batch"):
        VideoPredictor(model, max_batch=0)
    p = VideoPredictor(model)
    with pytest.raises(InputError, match="does not exist"):
        p.init_state(tmp_path / "missing")
    with pytest.raises(InputError, match="no JPEG frames"):
        p.init_state(tmp_path)
    frames = video_frames(3)
    with pytest.raises(InputError, match="one size"):
        p.init_state([frames[0], frames[1][:50]])
    with pytest.raises(InputError, match="uint8"):
        p.init_state([f.astype(np.float32) for f in frames])
    state = p.init_state(frames)
    with pytest.raises(InputError, match="no object has a prompt"):
        list(p.propagate_in_video(state))
    with pytest.raises(InputError, match="out of range"):
        p.add_new_points_or_box(state, 3, 1, points=[[1, 1]], labels=[1])
    with pytest.raises(InputError, match="together"):
        p.add_new_points_or_box(state, 0, 1, points=[[1, 1]])
    with pytest.raises(InputError, match="1 \\(positive\\) or 0"):
        p.add_new_points_or_box(state, 0, 1, points=[[1, 1]], labels=[5])
    with pytest.raises(InputError, match="N x 2"):
        p.add_new_points_or_box(state, 0, 1, points=[1, 2, 3], labels=[1])
    with pytest.raises(InputError, match="4 numbers"):
        p.add_new_points_or_box(state, 0, 1, box=[1, 2, 3])
    with pytest.raises(InputError, match="finite"):
        p.add_new_points_or_box(state, 0, 1, points=[[np.nan, 1]], labels=[1])
    with pytest.raises(InputError, match="2-D"):
        p.add_new_mask(state, 0, 1, np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="unknown object id"):
        p.clear_all_prompts_in_frame(state, 0, 99)
    with pytest.raises(InputError, match="does not exist"):
        p.remove_object(state, 99, strict=True)
    with pytest.raises(InputError, match="non-negative"):
        p.add_new_points_or_box(state, 0, 1, points=[[1, 1]], labels=[1])
        next(p.propagate_in_video(state, max_frame_num_to_track=-1))
    s = StreamingSession(model)
    with pytest.raises(InputError, match="start"):
        s.track(frames[0])
    s.start(frames[0])
    with pytest.raises(InputError, match="size"):
        s.track(frames[1][:60])
    with pytest.raises(InputError, match="unknown object id"):
        s.remove(4)
    with pytest.raises(InputError, match="not both"):
        s.add_prompt(1, points=[[1, 1]], labels=[1], mask=np.ones((4, 4)))


def test_onnx_memory_graphs_match_torch(tmp_path):
    """The fixed-shape memory attention (padded slots, validity mask as input) and memory encoder graphs give
    torch's results in onnxruntime, on a streaming session's real, partly empty memory."""
    ort = pytest.importorskip("onnxruntime")
    from swiftsam.video import StreamingSession
    from swiftsam.video.export import MemoryEncoderStage, export_memory_stages

    model = small_sam2()
    s = StreamingSession(model, max_cond_frames=2)
    frames = video_frames(4, seed=3)
    s.start(frames[0])
    s.add_prompt(1, points=[[70, 50]], labels=[1])
    s.add_prompt(2, box=[30, 20, 120, 90])
    for f in frames[1:3]:
        s.track(f)
    paths = export_memory_stages(model, tmp_path, objects=2, cond_slots=2)
    assert not any(m.training for m in model.modules())  # exporting leaves the model in eval mode (dropout off)
    with torch.inference_mode():
        s._commit()
        s._set_frame(frames[3])
        memory, pos, mask, n_ptr = s._memory(list(s.objects.values()), s.frame_idx)
        assert not mask.all()  # empty slots are masked out
        want = s.tracker.attend(s._feats, memory, pos, mask, n_ptr)
        masks = torch.randn(2, 1, 64, 64) * 5
        scores = torch.tensor([[1.0], [-1.0]])
        want_mem = s.tracker.encode_memory(s._feats, masks, scores, is_mask_from_pts=False).float()
        want_bin = s.tracker.encode_memory(s._feats, masks, scores, is_mask_from_pts=True).float()
    sess = ort.InferenceSession(str(paths["memory_attention"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"vision": s._feats.vision.numpy(), "vision_pos": s._feats.pos.numpy(),
                          "memory": memory.transpose(0, 1).numpy(), "memory_pos": pos.transpose(0, 1).numpy(),
                          "memory_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-3, rtol=0)
    enc = ort.InferenceSession(str(paths["memory_encoder"]), providers=["CPUExecutionProvider"])
    stage = MemoryEncoderStage(model)
    for binarize, tracker_mem in ((False, want_mem), (True, want_bin)):
        flags = torch.full((2, 1), binarize)
        with torch.inference_mode():
            ref_mem, ref_pos = stage(s._feats.vision, masks, scores, flags)
        # the stage is the tracker's memory encoding (which stores it as bfloat16)
        torch.testing.assert_close(ref_mem.to(torch.bfloat16).float(), tracker_mem, atol=1e-2, rtol=0)
        got_mem, got_pos = enc.run(None, {"vision": s._feats.vision.numpy(), "masks": masks.numpy(),
                                          "object_score_logits": scores.numpy(), "binarize": flags.numpy()})
        np.testing.assert_allclose(got_mem, ref_mem.numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(got_pos, ref_pos.numpy(), atol=1e-5, rtol=0)
