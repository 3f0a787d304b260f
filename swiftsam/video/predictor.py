"""``VideoPredictor``: SAM2VideoPredictor's API and results over a swiftsam SAM 2 model.

Differences from sam2 that do not change results: frames are read and preprocessed when they are needed (never
the whole video as float tensors); every object that is tracked on a frame runs in one batch through the memory
attention, the decoder and the memory encoder (``max_batch`` caps the batch: ``"auto"`` batches every object on
an accelerator and runs them one at a time on a CPU, where batching adds no speed: the arithmetic is the same and
larger intermediates fall out of cache, benchmarks/video.md; ``max_batch=1`` is sam2's way);
an unknown object id in ``clear_all_prompts_in_frame`` is an error instead of a new, empty object.
Masks are returned as torch tensors (objects x 1 x H x W logits at the video's size), as sam2 returns them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import InputError
from .frames import FrameSource, open_video, to_model_input
from .memory import NO_OBJ_SCORE, FrameFeatures, ObjectOutput, Sam2Tracker, TrackerConfig, non_overlapping


@dataclass
class ObjectState:
    """One object's prompts and results (sam2 keeps the same per object index)."""

    point_inputs: dict = field(default_factory=dict)  # frame -> (coords 1 x P x 2 in the S frame, labels 1 x P)
    mask_inputs: dict = field(default_factory=dict)  # frame -> 1 x 1 x S x S
    cond: dict = field(default_factory=dict)  # frame -> ObjectOutput (conditioning frames)
    non_cond: dict = field(default_factory=dict)
    temp_cond: dict = field(default_factory=dict)  # outputs of prompts not yet in memory
    temp_non_cond: dict = field(default_factory=dict)
    tracked: dict = field(default_factory=dict)  # frame -> tracked in reverse?

    def temp(self, is_cond: bool) -> dict:
        return self.temp_cond if is_cond else self.temp_non_cond

    def latest(self, frame_idx: int, is_cond: bool) -> ObjectOutput | None:
        out = self.temp(is_cond).get(frame_idx)
        if out is None:
            out = self.cond.get(frame_idx)
        if out is None:
            out = self.non_cond.get(frame_idx)
        return out


class VideoState:
    """A video's inference state (sam2's ``inference_state``): the frames (read on demand), the objects' prompts and
    results, and the features of the most recent frames."""

    def __init__(self, frames: FrameSource, device: torch.device, feature_cache: int = 2) -> None:
        self.frames = frames
        self.num_frames = len(frames)
        self.video_height = frames.height
        self.video_width = frames.width
        self.device = device
        self.objects: OrderedDict[object, ObjectState] = OrderedDict()
        self._features: OrderedDict[int, FrameFeatures] = OrderedDict()
        self._feature_cache = feature_cache

    @property
    def obj_ids(self) -> list:
        return list(self.objects)

    def __getitem__(self, key: str):  # sam2's dict keys that user code reads
        if key in ("num_frames", "video_height", "video_width", "obj_ids", "device"):
            return getattr(self, key)
        raise KeyError(key)

    def tensor_bytes(self) -> int:
        """Bytes of the tensors this state holds (results, memories, cached features)."""
        seen, total = set(), 0

        def add(t):
            nonlocal total
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()

        for obj in self.objects.values():
            for d in (obj.cond, obj.non_cond, obj.temp_cond, obj.temp_non_cond):
                for out in d.values():
                    for t in (out.pred_masks, out.obj_ptr, out.object_score_logits, out.maskmem_features):
                        add(t)
        for f in self._features.values():
            for t in (f.vision, f.pos, *f.high_res, f.embed):
                add(t)
        return total


def _as_tensor(x, dtype, what: str) -> torch.Tensor:
    try:
        t = x.detach().cpu().to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be numeric, got {x!r}") from e
    if dtype.is_floating_point and not torch.isfinite(t).all():
        raise InputError(f"{what} must be finite numbers, got {x!r}")
    return t


class VideoPredictor:
    """Track objects through a video with a SAM 2 model: ``init_state``, prompts on any frame
    (``add_new_points_or_box``, ``add_new_mask``), ``propagate_in_video`` forwards or backwards, corrections,
    ``remove_object`` / ``reset_state``. The same methods and results as sam2's ``SAM2VideoPredictor``.

    ``model``: a :class:`~swiftsam.modeling.sam2.Sam2` (e.g. ``swiftsam.load("sam2.1-hiera-tiny")``). Keyword
    arguments: ``non_overlap_masks``, ``add_all_frames_to_correct_as_cond`` (sam2's options of those names),
    ``max_batch`` (objects per batch: an int, None for all, or "auto": all on an accelerator, 1 on a CPU),
    ``dtype`` ("fp32" or "bf16": the heavy modules' precision), ``compile`` (torch.compile the memory attention and
    the mask decoder; see :class:`~swiftsam.video.memory.Sam2Tracker` for both) and any
    :class:`~swiftsam.video.memory.TrackerConfig` field.
    """

    def __init__(self, model, *, non_overlap_masks: bool = False, add_all_frames_to_correct_as_cond: bool = False,
                 max_batch: int | str | None = "auto", dtype="fp32", compile: bool = False, **config) -> None:
        try:
            cfg = TrackerConfig(**{**getattr(model, "video_defaults", {}), **config})
        except TypeError as e:
            raise InputError(f"unknown VideoPredictor option: {e}") from e
        self.tracker = Sam2Tracker(model, cfg, dtype=dtype, compile=compile)
        self.model = model.eval()
        self.non_overlap_masks = non_overlap_masks
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        if not (max_batch is None or max_batch == "auto" or (isinstance(max_batch, int) and not isinstance(
                max_batch, bool) and max_batch >= 1)):
            raise InputError(f"max_batch must be a positive integer, None (all objects) or 'auto', got {max_batch!r}")
        self.max_batch = max_batch
        self.image_size = self.tracker.image_size

    @property
    def device(self) -> torch.device:
        return self.tracker.device

    # -- state --------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def init_state(self, video, offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                   async_loading_frames: bool = False) -> VideoState:
        """A state for ``video``: a folder of JPEG frames, a video file, or frames (an iterable of H x W x 3 uint8
        RGB arrays). Frames are read when needed (the offload / async options of sam2 are accepted and have
        nothing left to do). The first frame's features are computed now, as sam2 does."""
        state = VideoState(open_video(video), self.device)
        self._features(state, 0)
        return state

    def reset_state(self, state: VideoState) -> None:
        """Remove every object, prompt and result."""
        state.objects.clear()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _check_frame(self, state: VideoState, frame_idx) -> int:
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise InputError(f"frame_idx must be an integer, got {frame_idx!r}")
        if not 0 <= frame_idx < state.num_frames:
            raise InputError(f"frame_idx {frame_idx} is out of range: the video has {state.num_frames} frames "
                             f"(0..{state.num_frames - 1})")
        return int(frame_idx)

    def _object(self, state: VideoState, obj_id, create: bool = True) -> ObjectState:
        if obj_id not in state.objects:
            if not create:
                raise InputError(f"unknown object id {obj_id!r}; the objects are {state.obj_ids}")
            try:
                hash(obj_id)
            except TypeError as e:
                raise InputError(f"obj_id must be hashable (an int or a string), got {type(obj_id).__name__}") from e
            state.objects[obj_id] = ObjectState()
        return state.objects[obj_id]

    def _features(self, state: VideoState, frame_idx: int) -> FrameFeatures:
        feats = state._features.get(frame_idx)
        if feats is None:
            image = to_model_input(state.frames[frame_idx], self.image_size, self.device)
            feats = self.tracker.backbone(image)
            state._features[frame_idx] = feats
            while len(state._features) > state._feature_cache:
                state._features.popitem(last=False)
        else:
            state._features.move_to_end(frame_idx)
        return feats

    def _to_video_res(self, state: VideoState, low_res: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(low_res, size=(state.video_height, state.video_width), mode="bilinear",
                              align_corners=False)
        return non_overlapping(masks) if self.non_overlap_masks else masks

    def _consolidated(self, state: VideoState, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """Every object's latest mask on a frame at the video's size (NO_OBJ_SCORE where it has none)."""
        out = torch.full((len(state.objects), 1, state.video_height, state.video_width), NO_OBJ_SCORE,
                         dtype=torch.float32, device=self.device)
        for i, obj in enumerate(state.objects.values()):
            o = obj.latest(frame_idx, is_cond)
            if o is not None:
                out[i : i + 1] = F.interpolate(o.pred_masks, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return non_overlapping(out) if self.non_overlap_masks else out

    def _prompt_frame(self, state, obj, frame_idx):
        """(is_init_cond_frame, reverse, is_cond) of a prompt on ``frame_idx``."""
        is_init = frame_idx not in obj.tracked
        reverse = False if is_init else obj.tracked[frame_idx]
        return is_init, reverse, is_init or self.add_all_frames_to_correct_as_cond

    def _conditioned(self, state, obj, frame_idx, feats, is_init, reverse) -> torch.Tensor:
        if is_init:
            return self.tracker.condition(feats, None)
        spec = self.tracker.select_memory(frame_idx, obj.cond, obj.non_cond, state.num_frames, reverse)
        return self.tracker.condition(feats, [spec])

    # -- prompts ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def add_new_points_or_box(self, state: VideoState, frame_idx: int, obj_id, points=None, labels=None,
                              clear_old_points: bool = True, normalize_coords: bool = True, box=None):
        """Clicks (``points`` N x 2 as x, y with ``labels`` 1 positive / 0 negative) and / or a ``box``
        (x0, y0, x1, y1) for ``obj_id`` on ``frame_idx``, in video pixels (``normalize_coords=False``: in the
        model's S x S frame, as sam2). Returns (frame_idx, obj_ids, masks: objects x 1 x H x W logits)."""
        frame_idx = self._check_frame(state, frame_idx)
        if points is None and box is None:
            raise InputError("give points (with labels) or a box")
        pts, lab = prompt_points(points, labels, box, clear_old_points, normalize_coords,
                                 (state.video_height, state.video_width), self.image_size, self.device)

        obj = self._object(state, obj_id)
        if not clear_old_points and frame_idx in obj.point_inputs:
            old_pts, old_lab = obj.point_inputs[frame_idx]
            pts, lab = torch.cat([old_pts, pts], dim=1), torch.cat([old_lab, lab], dim=1)
        obj.point_inputs[frame_idx] = (pts, lab)
        obj.mask_inputs.pop(frame_idx, None)
        is_init, reverse, is_cond = self._prompt_frame(state, obj, frame_idx)
        prev = obj.latest(frame_idx, is_cond)
        prev_logits = None if prev is None else torch.clamp(prev.pred_masks.to(self.device), -32.0, 32.0)
        if prev_logits is None and box is not None and getattr(self.model.contract, "box_mask_prior", False):
            prev_logits = self._box_prior(pts, lab)

        feats = self._features(state, frame_idx)
        pix = self._conditioned(state, obj, frame_idx, feats, is_init, reverse)
        multimask = self.tracker.use_multimask(is_init, pts.shape[1])
        h = self.tracker.heads(pix, feats, pts, lab, mask_inputs=prev_logits, multimask=multimask)
        obj.temp(is_cond)[frame_idx] = ObjectOutput(h.low_res_masks, h.obj_ptr, h.object_score_logits)
        return frame_idx, state.obj_ids, self._consolidated(state, frame_idx, is_cond)

    add_new_points = add_new_points_or_box

    def _box_prior(self, pts: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """A box prompt (corner labels 2 / 3) as the box-shaped mask input that models trained with the box mask
        prior (swiftsam's own) receive with every box (``prompts.box_prior_logits``): 1 x 1 x mask-input size."""
        from ..prompts import box_prior_logits

        corners = pts[0][(lab[0] == 2) | (lab[0] == 3)]
        box = torch.cat([corners.min(dim=0).values, corners.max(dim=0).values])[None]
        return box_prior_logits(box, self.image_size, tuple(self.model.contract.mask_input_size)).to(self.device)

    @torch.inference_mode()
    def add_new_mask(self, state: VideoState, frame_idx: int, obj_id, mask):
        """A mask (H x W, bool or 0 / 1) for ``obj_id`` on ``frame_idx``; any size (resized to the model's)."""
        frame_idx = self._check_frame(state, frame_idx)
        m = _as_tensor(mask, torch.float32, "mask") if not isinstance(mask, torch.Tensor) else mask.detach().float()
        if m.ndim != 2 or min(m.shape) < 1:
            raise InputError(f"mask must be a 2-D H x W array, got shape {tuple(m.shape)}")
        m = m[None, None].to(self.device)
        s = self.image_size
        if tuple(m.shape[-2:]) != (s, s):
            m = (F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True) >= 0.5).float()
        obj = self._object(state, obj_id)
        obj.mask_inputs[frame_idx] = m
        obj.point_inputs.pop(frame_idx, None)
        is_init, reverse, is_cond = self._prompt_frame(state, obj, frame_idx)
        feats = self._features(state, frame_idx)
        if self.tracker.config.use_mask_input_as_output_without_sam:
            h = self.tracker.mask_as_output(feats, m)
        else:
            pix = self._conditioned(state, obj, frame_idx, feats, is_init, reverse)
            h = self.tracker.heads(pix, feats, mask_inputs=m, multimask=self.tracker.use_multimask(is_init, 0))
        obj.temp(is_cond)[frame_idx] = ObjectOutput(h.low_res_masks, h.obj_ptr, h.object_score_logits)
        return frame_idx, state.obj_ids, self._consolidated(state, frame_idx, is_cond)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(self, state: VideoState, frame_idx: int, obj_id, need_output: bool = True):
        """Remove ``obj_id``'s prompts on ``frame_idx`` (its result there becomes an ordinary tracked frame)."""
        frame_idx = self._check_frame(state, frame_idx)
        obj = self._object(state, obj_id, create=False)
        obj.point_inputs.pop(frame_idx, None)
        obj.mask_inputs.pop(frame_idx, None)
        obj.temp_cond.pop(frame_idx, None)
        obj.temp_non_cond.pop(frame_idx, None)
        out = obj.cond.pop(frame_idx, None)
        if out is not None:
            obj.non_cond[frame_idx] = out
            obj.tracked.pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in o.temp_cond for o in state.objects.values())
        return frame_idx, state.obj_ids, self._consolidated(state, frame_idx, is_cond)

    @torch.inference_mode()
    def remove_object(self, state: VideoState, obj_id, strict: bool = False, need_output: bool = True):
        """Forget ``obj_id``; returns (obj_ids, [(frame_idx, masks) of the frames it had prompts on])."""
        if obj_id not in state.objects:
            if strict:
                raise InputError(f"cannot remove object id {obj_id!r}: it does not exist; the objects are "
                                 f"{state.obj_ids}")
            return state.obj_ids, []
        if len(state.objects) == 1:
            self.reset_state(state)
            return state.obj_ids, []
        obj = state.objects.pop(obj_id)
        frames = sorted(set(obj.point_inputs) | set(obj.mask_inputs))
        updated = []
        if need_output:
            for f in frames:
                is_cond = any(f in o.temp_cond for o in state.objects.values())
                updated.append((f, self._consolidated(state, f, is_cond)))
        return state.obj_ids, updated

    # -- tracking -----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def propagate_in_video_preflight(self, state: VideoState) -> None:
        """Encode the prompts' results into memory and check that every object has a prompt."""
        if not state.objects:
            raise InputError("no object has a prompt yet: add points, a box or a mask first")
        for obj_id, obj in state.objects.items():
            for is_cond in (False, True):
                temp = obj.temp(is_cond)
                for frame_idx, out in temp.items():
                    if out.maskmem_features is None:
                        high = F.interpolate(out.pred_masks.to(self.device), size=(self.image_size,) * 2,
                                             mode="bilinear", align_corners=False)
                        out.maskmem_features = self.tracker.encode_memory(
                            self._features(state, frame_idx), high, out.object_score_logits, is_mask_from_pts=True)
                    (obj.cond if is_cond else obj.non_cond)[frame_idx] = out
                temp.clear()
            if not obj.cond:
                raise InputError(f"object {obj_id!r} has no prompt on any frame: add points, a box or a mask "
                                 "for it (or remove it)")
            for frame_idx in obj.cond:
                obj.non_cond.pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(self, state: VideoState, start_frame_idx: int | None = None,
                           max_frame_num_to_track: int | None = None, reverse: bool = False):
        """Yield (frame_idx, obj_ids, masks: objects x 1 x H x W logits) for each frame, from ``start_frame_idx``
        (default: the first prompted frame) forwards, or backwards with ``reverse``."""
        self.propagate_in_video_preflight(state)
        n = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in state.objects.values() for t in obj.cond)
        start_frame_idx = self._check_frame(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = n
        if isinstance(max_frame_num_to_track, bool) or not isinstance(max_frame_num_to_track, (int, np.integer)) \
                or max_frame_num_to_track < 0:
            raise InputError(f"max_frame_num_to_track must be a non-negative integer, got {max_frame_num_to_track!r}")
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end = min(start_frame_idx + max_frame_num_to_track, n - 1)
            order = range(start_frame_idx, end + 1)
        obj_ids = state.obj_ids
        for frame_idx in order:
            masks = self._track_frame(state, frame_idx, reverse)
            yield frame_idx, obj_ids, self._to_video_res(state, masks)

    def _track_frame(self, state: VideoState, frame_idx: int, reverse: bool) -> torch.Tensor:
        """Track every object on one frame (objects with a prompt there keep its result): low-res masks."""
        objs = list(state.objects.values())
        todo = [i for i, o in enumerate(objs) if frame_idx not in o.cond]
        low = [o.cond[frame_idx].pred_masks.to(self.device) if frame_idx in o.cond else None for o in objs]
        if todo:
            feats = self._features(state, frame_idx)
            size = self.max_batch
            if size == "auto":
                size = 1 if self.device.type == "cpu" else None
            size = size or len(todo)
            groups = [todo[i : i + size] for i in range(0, len(todo), size)]
            for group in groups:
                specs = [self.tracker.select_memory(frame_idx, objs[i].cond, objs[i].non_cond, state.num_frames,
                                                    reverse) for i in group]
                outs = self.track_batch(feats, specs)
                for i, out in zip(group, outs):
                    objs[i].non_cond[frame_idx] = out
                    low[i] = out.pred_masks
        for o in objs:
            o.tracked[frame_idx] = reverse
        return torch.cat(low, dim=0)

    def track_batch(self, feats: FrameFeatures, specs) -> list[ObjectOutput]:
        """One tracking step of B objects on a frame: memory attention, decoder, memory encoder, all batched."""
        t = self.tracker
        h = t.track(feats, specs, multimask=t.use_multimask(False, 0))
        mem = t.encode_memory(feats, h.high_res_masks, h.object_score_logits, is_mask_from_pts=False)
        return [ObjectOutput(h.low_res_masks[i : i + 1].clone(), h.obj_ptr[i : i + 1].clone(),
                             h.object_score_logits[i : i + 1].clone(), mem[i : i + 1].clone())
                for i in range(len(specs))]


def prompt_points(points, labels, box, clear_old_points: bool, normalize_coords: bool, video_hw: tuple[int, int],
                  image_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clicks (N x 2, or 1 x N x 2, with N labels 1 / 0) and / or a box in video pixels (or, without
    ``normalize_coords``, in the model's S x S frame) -> SAM 2's point prompt (1 x M x 2 in the S x S frame, 1 x M
    labels; the box as corners 2 / 3 first), checked: VideoPredictor's and StreamingSession's one parser."""
    if (points is None) != (labels is None):
        raise InputError("points and labels must be given together (labels: 1 positive, 0 negative per point)")
    pts = torch.zeros(0, 2) if points is None else _as_tensor(points, torch.float32, "points")
    lab = torch.zeros(0, dtype=torch.int32) if labels is None else _as_tensor(labels, torch.int32, "labels")
    if pts.ndim == 3 and pts.shape[0] == 1:
        pts = pts[0]
    if lab.ndim == 2 and lab.shape[0] == 1:
        lab = lab[0]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"points must be N x 2 (x, y), got shape {tuple(pts.shape)}")
    if lab.ndim != 1 or lab.shape[0] != pts.shape[0]:
        raise InputError(f"labels must be N values for N={pts.shape[0]} points, got shape {tuple(lab.shape)}")
    if lab.numel() and not bool(((lab == 0) | (lab == 1)).all()):
        raise InputError(f"point labels must be 1 (positive) or 0 (negative), got {lab.tolist()}")
    pts, lab = pts[None], lab[None]
    if box is not None:
        if not clear_old_points:
            raise InputError("a box must come first: add it with clear_old_points=True")
        b = _as_tensor(box, torch.float32, "box").reshape(-1)
        if b.numel() != 4:
            raise InputError(f"box must be 4 numbers (x0, y0, x1, y1), got {b.numel()}")
        pts = torch.cat([b.reshape(1, 2, 2), pts], dim=1)
        lab = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), lab], dim=1)
    if normalize_coords:
        h, w = video_hw
        pts = pts / torch.tensor([w, h], dtype=torch.float32)
    return (pts * image_size).to(device), lab.to(device)
