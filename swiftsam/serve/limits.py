"""What the server accepts: its settings (``ServeConfig``) and the checks a request passes before it is queued
(prompt JSON, everything options). A bad request gets a clear 4xx message and never reaches the model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..prompts import PromptBatch

MAX_POINTS_PER_PROMPT = 64
# /v1/everything options a client may set, with their ranges (a point grid costs points_per_side^2 decodes)
EVERYTHING_OPTIONS = {
    "points_per_side": (int, 1, 64),
    "pred_iou_thresh": (float, 0.0, 1.0),
    "stability_score_thresh": (float, 0.0, 1.0),
    "box_nms_thresh": (float, 0.0, 1.0),
    "strategy": (str, ("grid", "hierarchical"), None),
}


@dataclass(frozen=True)
class ServeConfig:
    """The server's limits and batching settings (``swiftsam serve``'s options)."""

    max_upload_mb: float = 20.0  # a request body larger than this: 413
    max_pixels: int | None = 40_000_000  # an image with more pixels (read from its header): 413; None: no limit
    max_prompts: int = 64  # prompts in one /v1/segment request: more is a 400
    max_batch: int = 8  # requests that share one encoder / decoder call
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 64  # requests waiting for the model; beyond: 503 with Retry-After
    request_timeout_s: float = 60.0  # a request not answered by then: 504
    cache_mb: float = 256.0  # image embeddings kept by image hash (LRU by bytes); 0: none
    token: str | None = None  # bearer token /v1/* and /metrics require (401 without it); None: open
    decode_chunk: int = 64  # most prompts in one decoder call
    max_track_frames: int = 300  # frames in one /v1/track clip: more is a 400
    max_track_sessions: int = 4  # live /v1/track/sessions (each holds a fixed-size memory); more: 503
    track_session_idle_s: float = 300.0  # a session unused this long is closed when room is needed
    allow_urls: tuple[str, ...] = ()  # image URL prefixes the server may fetch (``image_url``); empty: none

    def __post_init__(self) -> None:
        checks = {
            "max_upload_mb": self.max_upload_mb > 0, "max_prompts": self.max_prompts >= 1,
            "max_batch": self.max_batch >= 1, "batch_wait_ms": self.batch_wait_ms >= 0,
            "max_queue": self.max_queue >= 1, "request_timeout_s": self.request_timeout_s > 0,
            "cache_mb": self.cache_mb >= 0, "decode_chunk": self.decode_chunk >= 1,
            "max_pixels": self.max_pixels is None or self.max_pixels >= 1,
            "max_track_frames": self.max_track_frames >= 1, "max_track_sessions": self.max_track_sessions >= 1,
            "track_session_idle_s": self.track_session_idle_s > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"serve settings out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                             f"(sizes, counts and times must be positive; waits and caches may be 0).")
        if self.token is not None and not self.token.strip():
            raise InputError("--token is empty: give a secret string, or leave --token out for an open server.")
        from .fetch import parse_allow_list

        object.__setattr__(self, "allow_urls", tuple(self.allow_urls))
        parse_allow_list(self.allow_urls)  # each entry checked: an http(s) URL prefix with a host

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def public(self) -> dict:
        """The limits a client may see (never the token)."""
        return {"max_upload_mb": self.max_upload_mb, "max_pixels": self.max_pixels, "max_prompts": self.max_prompts,
                "max_points_per_prompt": MAX_POINTS_PER_PROMPT, "max_batch": self.max_batch,
                "batch_wait_ms": self.batch_wait_ms, "max_queue": self.max_queue,
                "request_timeout_s": self.request_timeout_s, "auth": self.token is not None,
                "max_track_frames": self.max_track_frames, "max_track_sessions": self.max_track_sessions,
                "image_urls": list(self.allow_urls)}


@dataclass(frozen=True)
class SegmentRequest:
    prompts: PromptBatch
    multimask: bool


def _json_object(text: str | None, field: str, example: str) -> dict:
    if text is None:
        raise InputError(f"the form field {field!r} is missing: send it as JSON, e.g. {example}.")
    try:
        data = json.loads(text, parse_constant=lambda c: math.nan)  # NaN / Infinity become NaN: refused below
    except ValueError as e:
        raise InputError(f"the form field {field!r} is not valid JSON ({e}); send e.g. {example}.") from None
    if not isinstance(data, dict):
        raise InputError(f"the form field {field!r} must be a JSON object, e.g. {example}; got {type(data).__name__}.")
    return data


PROMPTS_EXAMPLE = '{"points": [[[120, 80, 1]]], "boxes": [[10, 20, 200, 180]], "multimask": false}'


def parse_prompts(text: str | None, original_size: tuple[int, int], contract, max_prompts: int) -> SegmentRequest:
    """``/v1/segment``'s ``prompts`` field: ``{"boxes": [[x0, y0, x1, y1], ...], "points": [[[x, y, label], ...],
    ...], "multimask": false}`` in pixels of the image. Prompt i is box i and/or point list i (lists of points
    of different lengths are padded with SAM's "not a point"). Returns the checked ``PromptBatch``."""
    data = _json_object(text, "prompts", PROMPTS_EXAMPLE)
    unknown = sorted(set(data) - {"boxes", "points", "multimask"})
    if unknown:
        raise InputError(f"unknown key(s) in prompts: {unknown}; the keys are boxes, points and multimask.")
    multimask = data.get("multimask", False)
    if not isinstance(multimask, bool):
        raise InputError(f"prompts.multimask must be true or false, got {multimask!r}.")
    boxes, points = data.get("boxes"), data.get("points")
    if boxes is None and points is None:
        raise InputError(f"prompts has neither boxes nor points: give at least one, e.g. {PROMPTS_EXAMPLE}.")
    counts = []
    coords = labels = box_array = None
    if boxes is not None:
        if not isinstance(boxes, list) or not boxes:
            raise InputError("prompts.boxes must be a non-empty list of [x0, y0, x1, y1] boxes in pixels.")
        counts.append(len(boxes))
    if points is not None:
        if not isinstance(points, list) or not points or not all(isinstance(p, list) and p for p in points):
            raise InputError("prompts.points must be a non-empty list with one non-empty list of [x, y, label] "
                             "clicks per prompt (label 1: foreground, 0: background).")
        counts.append(len(points))
    if len(set(counts)) > 1:
        raise InputError(f"prompts has {counts[0]} boxes but {counts[1]} point lists: prompt i is box i with point "
                         f"list i, so give as many of each (or only one kind).")
    n = counts[0]
    if n > max_prompts:
        raise InputError(f"{n} prompts in one request, over this server's limit of {max_prompts}: split the request.")
    if boxes is not None:
        box_array = _numbers(boxes, "prompts.boxes", (n, 4))
    if points is not None:
        longest = max(len(p) for p in points)
        if longest > MAX_POINTS_PER_PROMPT:
            raise InputError(f"a prompt with {longest} points, over the limit of {MAX_POINTS_PER_PROMPT} per prompt.")
        rows = []
        for i, p in enumerate(points):
            bad = [q for q in p if not isinstance(q, list) or len(q) != 3]
            if bad:
                raise InputError(f"prompts.points[{i}] must hold [x, y, label] triples; got {bad[0]!r}.")
            rows.append(_numbers(p, f"prompts.points[{i}]", (len(p), 3)))
        array = np.full((n, longest, 3), (0.0, 0.0, -1.0))  # padding: SAM's "not a point"
        for i, r in enumerate(rows):
            if not np.isin(r[:, 2], (0, 1)).all():
                raise InputError(f"prompts.points[{i}] labels must be 1 (foreground) or 0 (background); got "
                                 f"{sorted(set(r[:, 2].tolist()))}.")
            array[i, : len(r)] = r
        coords, labels = array[..., :2], array[..., 2]
    prompts = PromptBatch.from_pixels(contract, original_size, coords, labels, box_array)
    return SegmentRequest(prompts, multimask)


def _numbers(value: object, what: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must hold numbers only, got {json.dumps(value)[:200]}.") from None
    if a.shape != shape:
        raise InputError(f"{what} must have shape {list(shape)}, got {list(a.shape)}.")
    if not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN or infinite values.")
    return a


def parse_everything_options(text: str | None) -> dict:
    """``/v1/everything``'s optional ``options`` field: a JSON object of ``EVERYTHING_OPTIONS`` in their ranges."""
    if text is None or not text.strip():
        return {}
    data = _json_object(text, "options", '{"points_per_side": 16}')
    out = {}
    for key, value in data.items():
        if key not in EVERYTHING_OPTIONS:
            raise InputError(f"unknown everything option {key!r}; the options are {sorted(EVERYTHING_OPTIONS)}.")
        kind, lo, hi = EVERYTHING_OPTIONS[key]
        if kind is str:
            if value not in lo:
                raise InputError(f"options.{key} must be one of {list(lo)}, got {value!r}.")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                or not math.isfinite(value) or not lo <= value <= hi:
            raise InputError(f"options.{key} must be {'an integer' if kind is int else 'a number'} in {lo}..{hi}, "
                             f"got {value!r}.")
        else:
            value = kind(value)
        out[key] = value
    return out
