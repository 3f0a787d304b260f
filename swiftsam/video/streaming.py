"""Streaming tracking for frames that arrive one at a time (a camera, RTSP, a generator): ``StreamingSession``.

Memory has a fixed capacity and never grows: per object, ``max_cond_frames`` conditioning slots (prompted frames),
a ring of ``num_maskmem - 1`` recent frame memories and a ring of ``max_obj_ptrs_in_encoder - 1`` recent object
pointers, each slot with its frame number; which slots are valid on a frame is a mask handed to the memory
attention (``memory_mask``), so every frame runs the same shapes. All objects are tracked in one batch.

The results equal :class:`~swiftsam.video.VideoPredictor`'s on the same frames and prompts, given forward
tracking with ``max_obj_ptrs_in_encoder`` <= the number of frames (sam2 caps the pointer window at the video's
length, which a stream does not have), at most ``max_cond_frames`` prompted frames per object (older ones are
evicted; sam2's ``max_cond_frames_in_attn``) and corrections that become conditioning frames
(``add_all_frames_to_correct_as_cond=True``, the default here; with False a correction is the frame's ordinary
memory, as sam2's when tracking resumes after the corrected frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..errors import InputError
from .frames import check_frame, to_model_input
from .memory import FrameFeatures, ObjectOutput, Sam2Tracker, TrackerConfig, non_overlapping
from .predictor import _as_tensor, prompt_points


@dataclass
class _Slots:
    """``n`` memory slots: tensors, the frame each holds, validity."""

    data: torch.Tensor
    frame: torch.Tensor  # n (int64)
    valid: torch.Tensor  # n (bool)

    @classmethod
    def empty(cls, n: int, shape: tuple, dtype, device) -> _Slots:
        return cls(torch.zeros(n, *shape, dtype=dtype, device=device),
                   torch.full((n,), -1, dtype=torch.long, device=device),
                   torch.zeros(n, dtype=torch.bool, device=device))

    def write(self, i: int, value: torch.Tensor, frame: int) -> None:
        self.data[i].copy_(value.reshape(self.data.shape[1:]))
        self.frame[i] = frame
        self.valid[i] = True

    def nbytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in (self.data, self.frame, self.valid))


class _StreamObject:
    """One object's fixed-capacity memory and its state on the current frame."""

    def __init__(self, k_cond: int, n_recent: int, n_ptr: int, mem_shape: tuple, hidden: int, device) -> None:
        self.cond_mem = _Slots.empty(k_cond, mem_shape, torch.bfloat16, device)
        self.cond_ptr = _Slots.empty(k_cond, (hidden,), torch.float32, device)
        self.recent_mem = _Slots.empty(n_recent, mem_shape, torch.bfloat16, device)
        self.recent_ptr = _Slots.empty(n_ptr, (hidden,), torch.float32, device)
        self.points: tuple[torch.Tensor, torch.Tensor] | None = None  # clicks on the current frame
        self.current: ObjectOutput | None = None  # result on the current frame, not yet in memory
        self.kind = "init"  # how ``current`` came: "init" (first prompt), "tracked", "corrected"

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in (self.cond_mem, self.cond_ptr, self.recent_mem, self.recent_ptr))


class StreamingSession:
    """Track objects in a stream of frames with bounded memory.

    ``start(first_frame)``; ``add_prompt(obj_id, points=, labels=, box=, mask=)`` on the current frame (a new
    object, another click on the same frame, or a correction of a tracked object); ``remove(obj_id)``;
    ``track(frame) -> (obj_ids, masks)`` with masks objects x 1 x H x W logits at the frame's size.
    Options: ``max_cond_frames`` (prompted frames kept per object, default 4),
    ``add_all_frames_to_correct_as_cond`` (default True), ``non_overlap_masks``, ``dtype`` ("fp32" or "bf16") and
    ``compile`` (as :class:`~swiftsam.video.VideoPredictor`'s) and the fields of
    :class:`~swiftsam.video.memory.TrackerConfig`.
    """

    def __init__(self, model, *, max_cond_frames: int = 4, add_all_frames_to_correct_as_cond: bool = True,
                 non_overlap_masks: bool = False, dtype="fp32", compile: bool = False, **config) -> None:
        try:
            cfg = TrackerConfig(**config)
        except TypeError as e:
            raise InputError(f"unknown StreamingSession option: {e}") from e
        if cfg.memory_temporal_stride_for_eval != 1:
            raise InputError("a streaming session keeps the most recent frames: memory_temporal_stride_for_eval must be 1")
        if isinstance(max_cond_frames, bool) or not isinstance(max_cond_frames, int) or max_cond_frames < 1:
            raise InputError(f"max_cond_frames must be a positive integer, got {max_cond_frames!r}")
        self.tracker = Sam2Tracker(model, cfg, dtype=dtype, compile=compile)
        self.model = model.eval()
        self.max_cond_frames = max_cond_frames
        self.corrections_as_cond = add_all_frames_to_correct_as_cond
        self.non_overlap_masks = non_overlap_masks
        self.n_recent = self.tracker.num_maskmem - 1
        self.n_ptr = cfg.max_obj_ptrs_in_encoder - 1
        self.objects: dict[object, _StreamObject] = {}
        self.frame_idx = -1
        self._feats: FrameFeatures | None = None
        self.height = self.width = 0

    @property
    def obj_ids(self) -> list:
        return list(self.objects)

    @property
    def device(self) -> torch.device:
        return self.tracker.device

    # -- frames ---------------------------------------------------------------------------------------------------
    def _set_frame(self, frame) -> None:
        frame = check_frame(frame, f"frame {self.frame_idx + 1}")
        if self.frame_idx >= 0 and frame.shape[:2] != (self.height, self.width):
            raise InputError(f"frame {self.frame_idx + 1} is {frame.shape[1]}x{frame.shape[0]} but the stream is "
                             f"{self.width}x{self.height}; call start() for a stream of another size")
        self.height, self.width = frame.shape[:2]
        self._feats = self.tracker.backbone(to_model_input(frame, self.tracker.image_size, self.device))
        self.frame_idx += 1

    @torch.inference_mode()
    def start(self, first_frame) -> None:
        """Begin a stream (forgetting any previous one) with its first frame; prompts may follow."""
        self.objects.clear()
        self.frame_idx = -1
        self._set_frame(first_frame)

    def _require_started(self) -> None:
        if self._feats is None:
            raise InputError("the stream has not started: call start(first_frame) first")

    # -- prompts --------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, clear_old_points: bool = True,
                   normalize_coords: bool = True):
        """Prompt ``obj_id`` on the current frame: clicks (``points`` N x 2, ``labels`` 1 / 0) and / or a ``box``
        (x0, y0, x1, y1) in frame pixels, or a ``mask`` (H x W). A new id starts an object; for a tracked object it
        is a correction. Returns (obj_ids, masks of every object on the current frame)."""
        self._require_started()
        t = self.tracker
        if mask is not None and (points is not None or box is not None):
            raise InputError("give a mask, or points / a box, not both")
        if mask is None and points is None and box is None:
            raise InputError("give points (with labels), a box or a mask")
        obj = self.objects.get(obj_id)
        if obj is None:
            try:
                hash(obj_id)
            except TypeError as e:
                raise InputError(f"obj_id must be hashable (an int or a string), got {type(obj_id).__name__}") from e
            h, w = self._feats.vision.shape[-2:]
            obj = _StreamObject(self.max_cond_frames, self.n_recent, self.n_ptr, (t.mem_dim, h, w), t.hidden_dim,
                                self.device)
        is_init = obj.current is None or obj.kind == "init"
        feats = self._feats
        if mask is not None:
            m = self._mask_input(mask)
            obj.points = None
            if t.config.use_mask_input_as_output_without_sam:
                out = t.mask_as_output(feats, m)
            else:
                out = t.heads(self._conditioned(obj, is_init), feats, mask_inputs=m, multimask=t.use_multimask(is_init, 0))
        else:
            pts, lab = self._points(points, labels, box, clear_old_points, normalize_coords)
            if not clear_old_points and obj.points is not None:
                pts, lab = torch.cat([obj.points[0], pts], dim=1), torch.cat([obj.points[1], lab], dim=1)
            obj.points = (pts, lab)
            prev = None if obj.current is None else torch.clamp(obj.current.pred_masks, -32.0, 32.0)
            out = t.heads(self._conditioned(obj, is_init), feats, pts, lab, mask_inputs=prev,
                          multimask=t.use_multimask(is_init, pts.shape[1]))
        obj.current = ObjectOutput(out.low_res_masks, out.obj_ptr, out.object_score_logits)
        obj.kind = "init" if is_init else "corrected"
        self.objects[obj_id] = obj
        return self.obj_ids, self._masks([o.current.pred_masks for o in self.objects.values()])

    def _points(self, points, labels, box, clear_old_points, normalize_coords):
        return prompt_points(points, labels, box, clear_old_points, normalize_coords, (self.height, self.width),
                             self.tracker.image_size, self.device)

    def _mask_input(self, mask) -> torch.Tensor:
        m = mask.detach().float() if isinstance(mask, torch.Tensor) else _as_tensor(mask, torch.float32, "mask")
        if m.ndim != 2 or min(m.shape) < 1:
            raise InputError(f"mask must be a 2-D H x W array, got shape {tuple(m.shape)}")
        m = m[None, None].to(self.device)
        s = self.tracker.image_size
        if tuple(m.shape[-2:]) != (s, s):
            m = (F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False, antialias=True) >= 0.5).float()
        return m

    @torch.inference_mode()
    def remove(self, obj_id) -> list:
        """Stop tracking ``obj_id`` (its memory is freed); returns the remaining ids."""
        if obj_id not in self.objects:
            raise InputError(f"unknown object id {obj_id!r}; the objects are {self.obj_ids}")
        del self.objects[obj_id]
        return self.obj_ids

    # -- memory ---------------------------------------------------------------------------------------------------
    def _commit(self) -> None:
        """Write every object's result on the current frame into its memory (prompted results: a conditioning
        slot, their mask binarised for the memory encoder; tracked results: the recent rings)."""
        f = self.frame_idx
        prompted = [o for o in self.objects.values() if o.current is not None and o.current.maskmem_features is None]
        if prompted:
            high = F.interpolate(torch.cat([o.current.pred_masks for o in prompted]), size=(self.tracker.image_size,) * 2,
                                 mode="bilinear", align_corners=False)
            scores = torch.cat([o.current.object_score_logits for o in prompted])
            mem = self.tracker.encode_memory(self._feats, high, scores, is_mask_from_pts=True)
            for i, o in enumerate(prompted):
                o.current.maskmem_features = mem[i : i + 1]
        for o in self.objects.values():
            out = o.current
            if out is None:
                continue
            as_cond = o.kind == "init" or (o.kind == "corrected" and self.corrections_as_cond)
            r, p = f % self.n_recent, f % self.n_ptr
            if as_cond:
                o.recent_mem.valid[r] = False  # a prompted frame is no ordinary memory (its slot held frame f - r)
                o.recent_ptr.valid[p] = False
                self._write_cond(o, out, f)
            else:
                o.recent_mem.write(r, out.maskmem_features, f)
                o.recent_ptr.write(p, out.obj_ptr, f)
            o.current = None
            o.points = None

    def _write_cond(self, o: _StreamObject, out: ObjectOutput, f: int) -> None:
        slots = o.cond_mem
        free = (~slots.valid).nonzero()
        if len(free):
            i = int(free[0])
        else:  # evict the oldest prompted frame; within the recent windows it stays an ordinary memory there
            i = int(torch.argmin(slots.frame))
            old = int(slots.frame[i])
            r, p = old % self.n_recent, old % self.n_ptr
            if f - old <= self.n_recent and int(o.recent_mem.frame[r]) <= old:
                o.recent_mem.write(r, slots.data[i], old)
            if f - old <= self.n_ptr and int(o.recent_ptr.frame[p]) <= old:
                o.recent_ptr.write(p, o.cond_ptr.data[i], old)
        slots.write(i, out.maskmem_features, f)
        o.cond_ptr.write(i, out.obj_ptr, f)

    def _memory(self, objs: list[_StreamObject], t: int):
        """Fixed-shape memory of the objects for frame ``t``: memory / pos (M x B x mem_dim), mask (B x M)."""
        tr = self.tracker
        h, w = self._feats.vision.shape[-2:]
        hw = h * w
        pe = tr.memory_pos(h, w).flatten(2).permute(2, 0, 1)[:, 0]  # HW x mem_dim
        tpos = tr.model.maskmem_tpos_enc[:, 0, 0]  # num_maskmem x mem_dim
        k, r = self.max_cond_frames, self.n_recent
        split = tr.hidden_dim // tr.mem_dim
        mems, poss, masks = [], [], []
        for o in objs:
            spatial = torch.cat([o.cond_mem.data, o.recent_mem.data]).float()  # (k + r) x mem_dim x h x w
            spatial = spatial.flatten(2).permute(0, 2, 1).reshape(-1, tr.mem_dim)
            age = (t - o.recent_mem.frame).clamp(1, r)  # recent slot: t_pos = num_maskmem - age
            slot_t = torch.cat([torch.full((k,), tr.num_maskmem - 1, device=self.device), age - 1])
            spatial_pos = (pe[None] + tpos[slot_t][:, None]).reshape(-1, tr.mem_dim)
            recent_ok = o.recent_mem.valid & (t - o.recent_mem.frame >= 1) & (t - o.recent_mem.frame <= r)
            spatial_ok = torch.cat([o.cond_mem.valid, recent_ok]).repeat_interleave(hw)
            ptrs = torch.cat([o.cond_ptr.data, o.recent_ptr.data])
            dists = torch.cat([t - o.cond_ptr.frame, t - o.recent_ptr.frame])
            ptr_ok = torch.cat([o.cond_ptr.valid & (o.cond_ptr.frame <= t),
                                o.recent_ptr.valid & (dists[k:] >= 1) & (dists[k:] <= self.n_ptr)])
            if not tr.config.use_obj_ptrs_in_encoder:  # swiftsam's own model: spatial memories only
                ptr_ok = torch.zeros_like(ptr_ok)
            tok, tok_pos = tr.pointer_tokens(ptrs, dists, max(self.n_ptr, 1))
            mems.append(torch.cat([spatial, tok]))
            poss.append(torch.cat([spatial_pos, tok_pos]))
            masks.append(torch.cat([spatial_ok, ptr_ok.repeat_interleave(split)]))
        n_ptr_tokens = (k + self.n_ptr) * split
        return torch.stack(mems, dim=1), torch.stack(poss, dim=1), torch.stack(masks), n_ptr_tokens

    def _conditioned(self, obj: _StreamObject, is_init: bool) -> torch.Tensor:
        if is_init or self._feats.embed is not None:  # a decoder grid of its own: prompts go to the embedding
            return self.tracker.condition(self._feats, None)
        memory, pos, mask, n_ptr = self._memory([obj], self.frame_idx)
        return self.tracker.attend(self._feats, memory, pos, mask, n_ptr)

    # -- tracking -------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def track(self, frame):
        """Commit the current frame's results to memory, then track every object on the next ``frame``: returns
        (obj_ids, masks: objects x 1 x H x W logits at the frame's size)."""
        self._require_started()
        self._commit()
        self._set_frame(frame)
        objs = list(self.objects.values())
        if not objs:
            return [], torch.zeros(0, 1, self.height, self.width, device=self.device)
        tr = self.tracker
        memory, pos, mask, n_ptr = self._memory(objs, self.frame_idx)
        pix = tr.attend(self._feats, memory, pos, mask, n_ptr)
        h = tr.tracked_heads(self._feats, pix, multimask=tr.use_multimask(False, 0))
        mem = tr.encode_memory(self._feats, h.high_res_masks, h.object_score_logits, is_mask_from_pts=False)
        for i, o in enumerate(objs):
            o.current = ObjectOutput(h.low_res_masks[i : i + 1], h.obj_ptr[i : i + 1],
                                     h.object_score_logits[i : i + 1], mem[i : i + 1])
            o.kind = "tracked"
        return self.obj_ids, self._masks([h.low_res_masks])

    def _masks(self, low: list[torch.Tensor]) -> torch.Tensor:
        if not low:
            return torch.zeros(0, 1, self.height, self.width, device=self.device)
        masks = F.interpolate(torch.cat(low), size=(self.height, self.width), mode="bilinear", align_corners=False)
        return non_overlapping(masks) if self.non_overlap_masks else masks

    def tensor_bytes(self) -> int:
        """Bytes of the tensors the session holds (memories, the current frame's features and results)."""
        total = sum(o.nbytes() for o in self.objects.values())
        if self._feats is not None:
            total += sum(x.untyped_storage().nbytes() for x in (self._feats.vision, self._feats.pos, *self._feats.high_res))
        for o in self.objects.values():
            if o.current is not None:
                total += sum(x.untyped_storage().nbytes() for x in (o.current.pred_masks, o.current.obj_ptr,
                                                                     o.current.object_score_logits)
                             if x is not None)
        return total

