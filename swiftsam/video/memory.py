"""SAM 2's tracking step for a batch of objects: memory-conditioned features, the prompt heads, the memory encoder.

sam2 (``SAM2Base``) runs each object alone; here every tracked object of a frame is one batch entry: the image
features are shared (batch 1, broadcast), each object brings its own memories, padded to a common length with a
validity mask (``MemoryAttention``'s ``memory_mask``), so the memory attention, the decoder and the memory encoder
run once per frame. SAM 2.1's settings (``sam2.1_hiera_*.yaml`` plus the video predictor's post-processing flags)
are the defaults of :class:`TrackerConfig`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from ..errors import InputError
from ..modeling.common import cast_floats
from ..runtime import PRECISIONS as RUNTIME_PRECISIONS

NO_OBJ_SCORE = -1024.0  # the mask logits of an object that is not in the frame
PRECISIONS = {name: RUNTIME_PRECISIONS[name] for name in ("fp32", "bf16")}  # the video path's compute precisions


def precision_dtype(precision) -> torch.dtype:
    """``"fp32"`` / ``"bf16"`` (or torch.float32 / torch.bfloat16) -> the torch dtype; anything else: InputError."""
    if isinstance(precision, torch.dtype) and precision in PRECISIONS.values():
        return precision
    if isinstance(precision, str) and precision.lower() in PRECISIONS:
        return PRECISIONS[precision.lower()]
    raise InputError(f"dtype must be one of {', '.join(map(repr, PRECISIONS))} (or torch.float32 / torch.bfloat16), "
                     f"got {precision!r}")


def _in_dtype(fn, dtype: torch.dtype):
    """``fn`` (a method of a module copy whose weights are in ``dtype``) taking float32 tensors and returning
    float32: floating inputs are cast to ``dtype`` on entry, floating outputs back to float32."""

    def run(*args, **kwargs):
        return cast_floats(fn(*cast_floats(args, dtype), **cast_floats(kwargs, dtype)), torch.float32)

    return run


@dataclass(frozen=True)
class TrackerConfig:
    """SAM 2.1's tracking flags (``SAM2Base`` / ``SAM2VideoPredictor`` arguments of the same names)."""

    num_maskmem: int = 7  # mask memories: the conditioning frames' + the 6 most recent frames'
    max_obj_ptrs_in_encoder: int = 16
    max_cond_frames_in_attn: int = -1  # -1: every conditioning frame
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = True  # sam2's video predictor with apply_postprocessing
    use_mask_input_as_output_without_sam: bool = True
    directly_add_no_mem_embed: bool = True
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    non_overlap_masks_for_mem_enc: bool = False
    memory_temporal_stride_for_eval: int = 1
    use_obj_ptrs_in_encoder: bool = True  # object pointers as memory tokens (off for swiftsam's own model)


@dataclass
class FrameFeatures:
    """One frame's image features (batch 1): the stride-16 level and its position encoding, the projected
    stride-4 / stride-8 levels for the decoder (none for a one-level decoder), and for models whose decoder attends
    to another grid than the memory's (swiftsam's own, ``OwnVideoSam``) the decoder's embedding."""

    vision: torch.Tensor  # 1 x C x h x w
    pos: torch.Tensor  # 1 x C x h x w
    high_res: list[torch.Tensor]  # [1 x C/8 x 4h x 4w, 1 x C/4 x 2h x 2w], or []
    embed: torch.Tensor | None = None  # 1 x C x H x W: the decoder's input grid, when it is not the memory's


@dataclass
class ObjectOutput:
    """One object's result on one frame (sam2's compact per-frame output)."""

    pred_masks: torch.Tensor  # 1 x 1 x 4h x 4w low-res logits (float32)
    obj_ptr: torch.Tensor  # 1 x C
    object_score_logits: torch.Tensor  # 1 x 1
    maskmem_features: torch.Tensor | None = None  # 1 x mem_dim x h x w (bfloat16, as sam2 stores it)


@dataclass
class MemorySpec:
    """The memories one object attends to on one frame: spatial memories with their temporal slot, object
    pointers with their signed frame distance."""

    spatial: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (t_pos, 1 x mem_dim x h x w)
    ptrs: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (distance, 1 x C)
    t_diff_max: int = 15


@dataclass
class HeadsOutput:
    low_res_masks: torch.Tensor  # B x 1 x 4h x 4w
    high_res_masks: torch.Tensor  # B x 1 x S x S
    obj_ptr: torch.Tensor  # B x C
    object_score_logits: torch.Tensor  # B x 1


def sine_pe_1d(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sine encoding of (fractional) positions: ... -> ... x dim (sines, then cosines)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=pos.device)
    scale = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / half)
    x = pos.unsqueeze(-1) / scale
    return torch.cat([x.sin(), x.cos()], dim=-1)


def select_closest_cond_frames(frame_idx: int, cond: dict, max_num: int) -> tuple[dict, dict]:
    """(selected, unselected) conditioning frames: all of them when ``max_num`` is -1 or not exceeded; else the
    closest before ``frame_idx``, the closest at or after it, then the nearest others up to ``max_num``."""
    if max_num == -1 or len(cond) <= max_num:
        return cond, {}
    if max_num < 2:
        raise InputError(f"max_cond_frames_in_attn must be -1 or >= 2, got {max_num}")
    selected = {}
    before = max((t for t in cond if t < frame_idx), default=None)
    if before is not None:
        selected[before] = cond[before]
    after = min((t for t in cond if t >= frame_idx), default=None)
    if after is not None:
        selected[after] = cond[after]
    rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame_idx))
    selected.update((t, cond[t]) for t in rest[: max_num - len(selected)])
    return selected, {t: v for t, v in cond.items() if t not in selected}


class Sam2Tracker:
    """The per-frame computations of SAM 2's video tracking over a :class:`~swiftsam.modeling.sam2.Sam2`,
    batched over objects. Holds no video state.

    ``dtype`` ``"fp32"`` (default) or ``"bf16"``: the precision of the four heavy modules (image encoder, memory
    attention, mask decoder, memory encoder). bf16 runs them on a copy of the model cast to bfloat16 once (on a
    CPU with bf16 matrix units that is faster than ``torch.autocast``, which casts the weights on every call:
    benchmarks/video.md); their inputs are cast on entry and their outputs back to float32, so everything between
    them stays float32: the prompts' coordinate encoding, the object pointers' temporal encoding, RoPE's angles and
    rotation (memory_attention computes them in float32), the choice among multimask outputs and every sigmoid /
    threshold that decides a mask. Results and state are float32 as with fp32 (memories bfloat16, as always). The
    copy is taken now: later changes to the model's weights do not reach a bf16 tracker.

    ``compile``: run the memory attention and the mask decoder through ``torch.compile`` (dynamic shapes, so
    changing object and memory counts do not recompile every frame); the first frames pay the compilation.
    """

    def __init__(self, model, config: TrackerConfig | None = None, dtype="fp32", compile: bool = False) -> None:
        for name in ("memory_attention", "memory_encoder", "maskmem_tpos_enc", "forward_backbone"):
            if not hasattr(model, name):
                raise InputError(
                    f"{type(model).__name__} is not a video model (no {name}): video tracking needs a SAM 2 model, "
                    "e.g. swiftsam.load('sam2.1-hiera-tiny')"
                )
        if not isinstance(compile, bool):
            raise InputError(f"compile must be True or False, got {compile!r}")
        self.model = model
        self.config = config or TrackerConfig()
        self.dtype = precision_dtype(dtype)
        self.compiled = compile
        self.num_maskmem = int(model.maskmem_tpos_enc.shape[0])
        self.mem_dim = int(model.maskmem_tpos_enc.shape[-1])
        self.hidden_dim = int(model.no_mem_embed.shape[-1])
        self.image_size = int(model.contract.image.input_size)
        self._mem_pos: dict[tuple, torch.Tensor] = {}
        # the heavy modules' entries: the model's own in fp32, a bf16 copy's (float32 in and out) in bf16
        if self.dtype == torch.float32:
            src, wrap = model, (lambda fn: fn)
        else:
            src = copy.deepcopy(model).to(self.dtype).eval()
            wrap = lambda fn: _in_dtype(fn, self.dtype)  # noqa: E731
        self._backbone = wrap(src.forward_backbone)
        self._attention = wrap(src.memory_attention)
        self._decoder = wrap(src.sam_mask_decoder.predict_all)
        self._mem_encoder = wrap(src.memory_encoder.encode)
        # RoPE modules of the attention that runs, whose per-size tables are filled before a compiled call (filling
        # them inside would change the cache the graph was guarded on and recompile it on the next frame)
        self._rope = [mod for mod in src.memory_attention.modules() if hasattr(mod, "rope_tables")] if compile else []
        if compile:  # dynamic shapes: object and memory counts vary (batch 1 and batch > 1 compile once each)
            self._attention = torch.compile(self._attention, dynamic=True)
            self._decoder = torch.compile(self._decoder, dynamic=True)

    @property
    def device(self) -> torch.device:
        return self.model.no_mem_embed.device

    # -- image features ---------------------------------------------------------------------------------------
    def backbone(self, image: torch.Tensor) -> FrameFeatures:
        """SAM2Base.forward_image of one preprocessed frame (1 x 3 x S x S)."""
        return self.features_from(self._backbone(image.to(self.device)))

    @staticmethod
    def features_from(out: dict) -> FrameFeatures:
        """FrameFeatures of a ``forward_backbone`` result (every level but the last is a high-res level)."""
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        return FrameFeatures(vision=fpn[-1], pos=pos[-1], high_res=list(fpn[:-1]), embed=out.get("decoder_embed"))

    # -- memory ------------------------------------------------------------------------------------------------
    def memory_pos(self, h: int, w: int) -> torch.Tensor:
        """The memory's spatial position encoding (1 x mem_dim x h x w): the same for every frame and object."""
        key = (h, w, str(self.device))
        pe = self._mem_pos.get(key)
        if pe is None:
            dummy = torch.zeros(1, self.mem_dim, h, w, device=self.device)
            pe = self.model.memory_encoder.position_encoding(dummy).to(dummy.dtype)
            self._mem_pos[key] = pe
        return pe

    def select_memory(self, frame_idx: int, cond: dict, non_cond: dict, num_frames: int | None,
                      reverse: bool) -> MemorySpec:
        """The memories of one object on ``frame_idx`` (SAM2Base._prepare_memory_conditioned_features):
        conditioning frames (t_pos 0), the ``num_maskmem - 1`` previous frames in tracking order, object pointers
        of the conditioning frames in the past and of up to 15 previous frames."""
        c = self.config
        selected, unselected = select_closest_cond_frames(frame_idx, cond, c.max_cond_frames_in_attn)
        spec = MemorySpec()
        spec.spatial = [(0, out.maskmem_features) for out in selected.values()]
        stride = c.memory_temporal_stride_for_eval
        for t_pos in range(1, self.num_maskmem):
            t_rel = self.num_maskmem - t_pos
            if t_rel == 1:
                prev = frame_idx + t_rel if reverse else frame_idx - t_rel
            elif not reverse:
                prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
            else:
                prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
            out = non_cond.get(prev, unselected.get(prev))
            if out is not None:
                spec.spatial.append((t_pos, out.maskmem_features))
        if not c.use_obj_ptrs_in_encoder:
            return spec
        max_ptrs = c.max_obj_ptrs_in_encoder if num_frames is None else min(num_frames, c.max_obj_ptrs_in_encoder)
        sign = -1 if reverse else 1
        for t, out in selected.items():
            if c.only_obj_ptrs_in_the_past_for_eval and (t < frame_idx if reverse else t > frame_idx):
                continue
            dist = (frame_idx - t) * sign if c.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t)
            spec.ptrs.append((dist, out.obj_ptr))
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            out = non_cond.get(t, unselected.get(t))
            if out is not None:
                spec.ptrs.append((t_diff, out.obj_ptr))
        spec.t_diff_max = max(max_ptrs - 1, 1)
        return spec

    def pointer_tokens(self, ptrs: torch.Tensor, dists: torch.Tensor, t_diff_max: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Object pointers (P x C) and their frame distances (P) -> memory tokens (P*C/mem_dim x mem_dim): each
        pointer split into C/mem_dim tokens, all of them with the pointer's projected temporal encoding."""
        m = self.model
        pos = m.obj_ptr_tpos_proj(sine_pe_1d(dists.float() / t_diff_max, self.hidden_dim))
        split = self.hidden_dim // self.mem_dim
        return ptrs.reshape(-1, self.mem_dim), pos.repeat_interleave(split, dim=0)

    def pack(self, specs: list[MemorySpec], h: int, w: int):
        """Memories of B objects as one padded batch: memory / pos (M x B x mem_dim), mask (B x M, or None when no
        padding is needed) and the number of pointer tokens (the last ones, not rotated by RoPE)."""
        tpos = self.model.maskmem_tpos_enc  # num_maskmem x 1 x 1 x mem_dim
        pe = self.memory_pos(h, w).flatten(2).permute(2, 0, 1)  # HW x 1 x mem_dim
        spatial, spatial_pos, ptr_tok, ptr_pos = [], [], [], []
        for spec in specs:
            if not spec.spatial:
                raise InputError("an object has no memory to track from: add a prompt on a frame first")
            mem = torch.cat([m.float().flatten(2).permute(2, 0, 1) for _, m in spec.spatial], dim=0)
            pos = torch.cat([pe + tpos[self.num_maskmem - t - 1] for t, _ in spec.spatial], dim=0)
            spatial.append(mem[:, 0])
            spatial_pos.append(pos[:, 0])
            if spec.ptrs:
                dists = torch.tensor([d for d, _ in spec.ptrs], device=self.device)
                tok, tpe = self.pointer_tokens(torch.cat([p for _, p in spec.ptrs], dim=0), dists, spec.t_diff_max)
            else:
                tok = tpe = pe.new_zeros(0, self.mem_dim)
            ptr_tok.append(tok)
            ptr_pos.append(tpe)
        n_sp = max(x.shape[0] for x in spatial)
        n_ptr = max(x.shape[0] for x in ptr_tok)
        b = len(specs)
        if all(x.shape[0] == n_sp for x in spatial) and all(x.shape[0] == n_ptr for x in ptr_tok):
            memory = torch.stack([torch.cat([s, p]) for s, p in zip(spatial, ptr_tok)], dim=1)
            memory_pos = torch.stack([torch.cat([s, p]) for s, p in zip(spatial_pos, ptr_pos)], dim=1)
            return memory, memory_pos, None, n_ptr
        memory = pe.new_zeros(n_sp + n_ptr, b, self.mem_dim)
        memory_pos = torch.zeros_like(memory)
        mask = torch.zeros(b, n_sp + n_ptr, dtype=torch.bool, device=self.device)
        for i in range(b):
            k, p = spatial[i].shape[0], ptr_tok[i].shape[0]
            memory[:k, i], memory_pos[:k, i] = spatial[i], spatial_pos[i]
            memory[n_sp : n_sp + p, i], memory_pos[n_sp : n_sp + p, i] = ptr_tok[i], ptr_pos[i]
            mask[i, :k] = True
            mask[i, n_sp : n_sp + p] = True
        return memory, memory_pos, mask, n_ptr

    def attend(self, feats: FrameFeatures, memory: torch.Tensor, memory_pos: torch.Tensor,
               mask: torch.Tensor | None, num_ptr_tokens: int) -> torch.Tensor:
        """The frame's stride-16 features conditioned on B objects' memories (M x B x mem_dim) -> B x C x h x w."""
        _, c, h, w = feats.vision.shape
        b = memory.shape[1]
        for mod in self._rope:
            mod.rope_tables(h, w, self.device)
        curr = feats.vision.flatten(2).permute(2, 0, 1).expand(-1, b, -1)
        curr_pos = feats.pos.flatten(2).permute(2, 0, 1).expand(-1, b, -1)
        out = self._attention(
            curr=[curr], curr_pos=[curr_pos], memory=memory, memory_pos=memory_pos,
            num_obj_ptr_tokens=num_ptr_tokens, feat_size=(h, w), memory_mask=mask,
        )
        return out.permute(1, 2, 0).reshape(b, c, h, w)

    def condition(self, feats: FrameFeatures, specs: list[MemorySpec] | None, batch: int = 1) -> torch.Tensor:
        """The decoder's input on a prompted frame (B x C x h x w): memory-conditioned features; ``specs`` None:
        an initial conditioning frame (``no_mem_embed`` added, no memory). A model whose decoder has a grid of its
        own (``FrameFeatures.embed``, swiftsam's own) takes its embedding, as its image model does: its memory
        serves the tracked frames (``track``)."""
        if feats.embed is not None:
            return self.decoder_image(feats, batch if specs is None else len(specs))
        if specs is None:
            if not self.config.directly_add_no_mem_embed:
                raise InputError("only directly_add_no_mem_embed=True (SAM 2.1's setting) is supported")
            x = feats.vision + self.model.no_mem_embed.reshape(1, -1, 1, 1)
            return x.expand(batch, -1, -1, -1)
        _, _, h, w = feats.vision.shape
        memory, memory_pos, mask, n_ptr = self.pack(specs, h, w)
        return self.attend(feats, memory, memory_pos, mask, n_ptr)

    def track(self, feats: FrameFeatures, specs: list[MemorySpec], multimask: bool) -> HeadsOutput:
        """A tracked frame (no prompt) of B objects from their memories: memory attention, then the heads."""
        _, _, h, w = feats.vision.shape
        memory, memory_pos, mask, n_ptr = self.pack(specs, h, w)
        return self.tracked_heads(feats, self.attend(feats, memory, memory_pos, mask, n_ptr), multimask)

    def tracked_heads(self, feats: FrameFeatures, attended: torch.Tensor, multimask: bool) -> HeadsOutput:
        """The heads of a tracked frame from its memory-attended features (B x C x h x w). SAM 2: the decoder on
        them, no prompt. A model with its own decoder grid (``OwnVideoSam``): they predict the object's mask
        (``memory_prior``), which prompts the decoder on the embedding as mask input and box; an empty
        prediction is an absent object. Its ``high_res_masks`` (what the memory encoder encodes) are that
        prediction, as in training (the decoder's masks overshoot the object, and encoding them into the memory
        let the overshoot grow frame after frame: on DAVIS dog, J fell from 0.71 to 0.25 in 11 frames, against
        0.71 to 0.35 with the prediction encoded); the low-res masks (the result) are the decoder's."""
        if feats.embed is None:
            return self.heads(attended, feats, multimask=multimask)
        m = self.model
        b = attended.shape[0]
        prior = m.memory_prior(attended).float()
        prior_high = F.interpolate(prior, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        fg = prior_high[:, 0] > 0
        present = fg.flatten(1).any(dim=1)
        rows, cols = fg.any(dim=2), fg.any(dim=1)  # B x S (over x), B x S (over y)
        idx = torch.arange(self.image_size, device=prior.device, dtype=torch.float32)
        big = float(self.image_size)

        def lo_hi(hit):
            lo = torch.where(hit, idx, big).min(dim=1).values
            hi = torch.where(hit, idx, -1.0).max(dim=1).values + 1
            return torch.where(present, lo, 0.0), torch.where(present, hi, big)

        x0, x1 = lo_hi(rows)
        y0, y1 = lo_hi(cols)
        coords = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y1], -1)], dim=1)  # B x 2 x 2
        labels = torch.tensor([[2, 3]], dtype=torch.int32, device=prior.device).expand(b, -1)
        mask_in = prior.clamp(-m.prior_clamp, m.prior_clamp)
        out = self.heads(self.decoder_image(feats, b), feats, coords, labels, mask_inputs=mask_in, multimask=multimask)
        scores = torch.where(present, 10.0, -10.0)[:, None].to(out.object_score_logits.dtype)
        gate = present[:, None, None, None]
        lam = present[:, None].float()
        return HeadsOutput(torch.where(gate, out.low_res_masks, NO_OBJ_SCORE),
                           torch.where(gate, prior_high, NO_OBJ_SCORE),
                           lam * out.obj_ptr + (1 - lam) * m.no_obj_ptr, scores)

    def decoder_image(self, feats: FrameFeatures, batch: int) -> torch.Tensor:
        """The frame's features without memory or ``no_mem_embed`` at the decoder's grid (B x C x ...)."""
        x = feats.vision if feats.embed is None else feats.embed
        return x.expand(batch, -1, -1, -1)

    # -- heads -------------------------------------------------------------------------------------------------
    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        c = self.config
        return (c.multimask_output_in_sam and (is_init_cond_frame or c.multimask_output_for_tracking)
                and c.multimask_min_pt_num <= num_points <= c.multimask_max_pt_num)

    def _embed_prompts(self, coords, labels, mask_inputs):
        """sam2's prompt encoding of points whose labels may be 2 / 3 (a box's corners, as SAM 2 gives boxes):
        the points padded with one "not a point", each with its label's embedding."""
        pe = self.model.sam_prompt_encoder
        if not self.model.contract.box_as_points and bool((labels >= 2).any()):
            # SAM 1's prompt format (swiftsam's own model): a box's corners end the prompt, no padding point
            sparse = pe.embed_points(coords, labels, pad=False)
            sparse = sparse + (labels[..., None] == 2) * pe.point_embeddings[2].weight
            sparse = sparse + (labels[..., None] == 3) * pe.point_embeddings[3].weight
            return sparse, self._dense(pe, coords.shape[0], mask_inputs)
        padded = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)[..., None]
        sparse = pe.embed_points(coords, labels, pad=True)
        sparse = sparse + (padded == 2) * pe.point_embeddings[2].weight + (padded == 3) * pe.point_embeddings[3].weight
        return sparse, self._dense(pe, coords.shape[0], mask_inputs)

    @staticmethod
    def _dense(pe, batch: int, mask_inputs):
        if mask_inputs is not None:
            return pe.embed_masks(mask_inputs)
        h, w = pe.image_embedding_size
        return pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def heads(self, pix: torch.Tensor, feats: FrameFeatures, coords: torch.Tensor | None = None,
              labels: torch.Tensor | None = None, mask_inputs: torch.Tensor | None = None,
              multimask: bool = False) -> HeadsOutput:
        """SAM2Base._forward_sam_heads for B objects: points (B x P x 2 in the S x S frame, labels B x P; none:
        one padding point), an optional mask prompt (B x 1 x ...), the best of three masks with ``multimask``."""
        m, c = self.model, self.config
        b = pix.shape[0]
        if coords is None:
            coords = torch.zeros(b, 1, 2, device=pix.device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=pix.device)
        pe = m.sam_prompt_encoder
        if mask_inputs is not None and tuple(mask_inputs.shape[-2:]) != tuple(pe.mask_input_size):
            mask_inputs = F.interpolate(mask_inputs.float(), size=pe.mask_input_size, mode="bilinear",
                                        align_corners=False, antialias=True)
        sparse, dense = self._embed_prompts(coords, labels, mask_inputs)
        image_pe = pe.get_dense_pe(self.dtype)  # kept in the tracker's dtype: no cast per frame
        low_multi, ious, tokens, obj_scores = self.decode(pix, image_pe, sparse, dense, feats, multimask)
        appearing = obj_scores > 0
        low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE).float()
        high_multi = F.interpolate(low_multi, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        token = tokens[:, 0]
        if multimask:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=pix.device)
            low, high = low_multi[rows, best].unsqueeze(1), high_multi[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        else:
            low, high = low_multi, high_multi
        ptr = m.obj_ptr_proj(token)
        lam = obj_scores.sigmoid() if c.soft_no_obj_ptr else appearing.float()
        if c.fixed_no_obj_ptr:
            ptr = lam * ptr
        ptr = ptr + (1 - lam) * m.no_obj_ptr
        return HeadsOutput(low, high, ptr, obj_scores)

    def decode(self, pix, image_pe, sparse, dense, feats: FrameFeatures, multimask: bool):
        """The mask decoder (``Sam2MaskDecoder.forward``'s results for one image embedding per object): every
        output in the tracker's precision, then the choice of outputs (multimask, or the single mask unless it is
        unstable) in float32 on them."""
        masks, ious, obj_scores, tokens = self._decoder(pix, image_pe, sparse, dense, feats.high_res or None,
                                                        return_tokens=True)
        return (*self.model.sam_mask_decoder.select_outputs(masks, ious, tokens, multimask), obj_scores)

    def mask_as_output(self, feats: FrameFeatures, mask_inputs: torch.Tensor) -> HeadsOutput:
        """SAM2Base._use_mask_as_output: a given mask (B x 1 x S x S, 0 / 1) is the output (logits -10 / +10);
        the decoder only makes its object pointer."""
        m = self.model
        x = mask_inputs.float()
        high = x * 20.0 - 10.0
        low = F.interpolate(high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
        b = x.shape[0]
        lam = torch.any(x.flatten(1) > 0.0, dim=1)[:, None].float()
        if not self.config.use_obj_ptrs_in_encoder:  # no pointer to make: the decoder need not run
            return HeadsOutput(low, high, m.no_obj_ptr.expand(b, -1) + 0.0, 20.0 * lam - 10.0)
        ptr = self.heads(self.decoder_image(feats, b), feats, mask_inputs=m.mask_downsample(x)).obj_ptr
        scores = 20.0 * lam - 10.0
        if self.config.fixed_no_obj_ptr:
            ptr = lam * ptr
        ptr = ptr + (1 - lam) * m.no_obj_ptr
        return HeadsOutput(low, high, ptr, scores)

    # -- memory encoder ----------------------------------------------------------------------------------------
    def encode_memory(self, feats: FrameFeatures, high_res_masks: torch.Tensor, object_score_logits: torch.Tensor,
                      is_mask_from_pts: bool, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """SAM2Base._encode_new_memory for B objects: B x mem_dim x h x w, stored as bfloat16 (as sam2 stores it;
        ``dtype`` another, e.g. float32 for training)."""
        m, c = self.model, self.config
        masks = high_res_masks
        if c.non_overlap_masks_for_mem_enc:
            masks = non_overlapping(masks)
        if c.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
            mask_for_mem = (masks > 0).float()
        else:
            mask_for_mem = torch.sigmoid(masks)
        mask_for_mem = mask_for_mem * c.sigmoid_scale_for_mem_enc + c.sigmoid_bias_for_mem_enc
        b = masks.shape[0]
        feats_mem, _ = self._mem_encoder(feats.vision.expand(b, -1, -1, -1), mask_for_mem, skip_mask_sigmoid=True)
        absent = 1 - (object_score_logits > 0).float()
        feats_mem = feats_mem + absent[..., None, None] * m.no_obj_embed_spatial[..., None, None]
        return feats_mem.to(dtype)


def non_overlapping(masks: torch.Tensor) -> torch.Tensor:
    """Keep each pixel's highest-scoring object; the others' logits there are clamped to at most -10."""
    if masks.shape[0] == 1:
        return masks
    best = torch.argmax(masks, dim=0, keepdim=True)
    keep = best == torch.arange(masks.shape[0], device=masks.device)[:, None, None, None]
    return torch.where(keep, masks, torch.clamp(masks, max=-10.0))
