"""``POST /v1/track``: a short video and prompts in, every frame's masks (COCO RLE) out.

The video is multipart field ``video`` (a video file OpenCV reads, or a zip of frame images, sorted by name) or
repeated ``frames`` fields (image files, in order). ``prompts`` is a JSON list of prompts with the semantics of
``swiftsam track`` (``apps.video_track``: one parser, one tracker): strings in the command line's text form
(``"box 10,20,200,180@0#1"``, ``"point 120,80,0@3#2"``) or objects ``{"box": [x0, y0, x1, y1] | "point":
[x, y, label] | "mask": COCO RLE, "frame": 0, "obj": 1}``. The answer holds ``track.json``'s per-frame records.
Frames are decoded when the tracker needs them, with the checks (pixel limit) of image uploads.

**Sessions** (SAM 2 models; ``video.StreamingSession``: memory of a fixed size) for frames sent one at a time:
``POST /v1/track/sessions`` (``image``: the first frame, optional ``prompts``) -> ``{"session", "frame",
"objects"}``; ``POST /v1/track/sessions/{id}/prompts`` (``prompts`` on the current frame: new objects or
corrections); ``POST /v1/track/sessions/{id}/frames`` (``image``: the next frame, tracked); ``DELETE
/v1/track/sessions/{id}``. A prompt without a frame is on the session's current frame; another frame is an error.
At most ``max_track_sessions`` live at once; one idle for ``track_session_idle_s`` is closed to make room.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ..apps.video_track import (Prompt, frame_record, group_prompts, is_video_model, memory_results, parse_prompt,
                                track_objects)
from ..errors import InputError
from ..image_io import IMAGE_SUFFIXES, ImageTooLargeError, load_image_bytes
from ..masks import decode_rle
from ..video.frames import FrameSource

TRACK_PROMPTS_EXAMPLE = '["box 10,20,200,180@0#1", {"point": [120, 80, 1], "frame": 3, "obj": 2}]'


class EncodedFrames(FrameSource):
    """Frames held as their encoded bytes (an upload), decoded when asked for."""

    def __init__(self, images: list[tuple[str, bytes]], max_pixels: int | None) -> None:
        self.images, self.max_pixels = images, max_pixels
        self.height, self.width = self.read(0).shape[:2]

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> np.ndarray:
        name, data = self.images[index]
        return load_image_bytes(data, self.max_pixels, True, name)


def _zip_frames(data: bytes, max_frames: int, max_bytes: int) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise InputError(f"the 'video' field looks like a zip but cannot be read ({e}).") from None
    members = sorted((i for i in archive.infolist() if not i.is_dir() and Path(i.filename).suffix.lower()
                      in IMAGE_SUFFIXES and not Path(i.filename).name.startswith(".")), key=lambda i: i.filename)
    if not members:
        raise InputError(f"the zip holds no frame images ({', '.join(IMAGE_SUFFIXES)}): put the frames in it, named "
                         f"in order (00000.jpg, 00001.jpg, ...).")
    if len(members) > max_frames:
        raise InputError(f"the zip holds {len(members)} frames, over this server's limit of {max_frames} "
                         f"(--max-track-frames): send a shorter clip.")
    if sum(i.file_size for i in members) > max_bytes:
        raise ImageTooLargeError(f"the zip's frames unpack to more than {max_bytes / 2**20:g} MB (this server's "
                                 f"--max-upload-mb): send fewer or smaller frames.")
    return [(f"frame {i.filename} of the zip", archive.read(i)) for i in members]


def open_upload(video: bytes | None, frames: list[bytes], max_frames: int, max_pixels: int | None, max_bytes: int,
                tmpdir: str) -> FrameSource:
    """The uploaded clip as frames read on demand (a video file is written to ``tmpdir`` for OpenCV)."""
    if (video is None) == (not frames):
        raise InputError("send the clip as multipart field 'video' (a video file or a zip of frames), or as "
                         "repeated 'frames' fields (image files in order), one of the two.")
    if frames:
        if len(frames) > max_frames:
            raise InputError(f"{len(frames)} frames, over this server's limit of {max_frames} (--max-track-frames): "
                             f"send a shorter clip.")
        return EncodedFrames([(f"frame {k}", d) for k, d in enumerate(frames)], max_pixels)
    if not video:
        raise InputError("the 'video' field is empty.")
    if video[:4] == b"PK\x03\x04":
        return EncodedFrames(_zip_frames(video, max_frames, max_bytes), max_pixels)
    from ..optional import require
    from ..video.frames import VideoFile

    require("cv2", "video files in /v1/track (send a zip of frames, or 'frames' fields, instead)")
    path = Path(tmpdir) / "clip.mp4"
    path.write_bytes(video)
    source = VideoFile(path)
    if len(source) > max_frames:
        raise InputError(f"the video has {len(source)} frames, over this server's limit of {max_frames} "
                         f"(--max-track-frames): send a shorter clip.")
    if max_pixels is not None and source.height * source.width > max_pixels:
        raise ImageTooLargeError(f"the video's frames are {source.width}x{source.height}, over this server's limit "
                                 f"of {max_pixels} pixels (--max-pixels): send a smaller video.")
    return source


def parse_track_prompts(text: str | None, max_prompts: int, default_frame: int = 0) -> list[Prompt]:
    """``/v1/track``'s ``prompts`` field (the module's doc) as checked ``Prompt``s; ``default_frame``: the frame
    of a prompt that names none."""
    if text is None:
        raise InputError(f"the form field 'prompts' is missing: send a JSON list, e.g. {TRACK_PROMPTS_EXAMPLE}.")
    try:
        data = json.loads(text, parse_constant=lambda c: math.nan)  # NaN / Infinity: refused by the checks
    except ValueError as e:
        raise InputError(f"the form field 'prompts' is not valid JSON ({e}); send e.g. {TRACK_PROMPTS_EXAMPLE}.") \
            from None
    if not isinstance(data, list) or not data:
        raise InputError(f"'prompts' must be a non-empty JSON list, e.g. {TRACK_PROMPTS_EXAMPLE}.")
    if len(data) > max_prompts:
        raise InputError(f"{len(data)} prompts in one request, over this server's limit of {max_prompts}.")
    out = []
    for i, item in enumerate(data):
        where = f"prompts[{i}]"
        if isinstance(item, str):
            kind, _, spec = item.strip().partition(" ")
            if kind == "mask":
                raise InputError(f"{where} {item!r}: send a mask as an object {{\"mask\": COCO RLE, \"frame\": F, "
                                 f"\"obj\": K}} (the server reads no mask files).")
            out.append(parse_prompt(kind, spec, f"{where} {item!r}", default_frame=default_frame))
            continue
        if not isinstance(item, dict):
            raise InputError(f"{where} must be a string like \"box 10,20,200,180@0#1\" or an object like "
                             f"{{\"box\": [10, 20, 200, 180], \"frame\": 0, \"obj\": 1}}; got {json.dumps(item)[:80]}.")
        kinds = [k for k in ("box", "point", "mask") if k in item]
        unknown = sorted(set(item) - {"box", "point", "mask", "frame", "obj"})
        if len(kinds) != 1 or unknown:
            raise InputError(f"{where} must hold exactly one of box, point or mask, with optional frame and obj "
                             f"(got keys {sorted(item)}).")
        kind = kinds[0]
        value = item[kind]
        if kind == "mask":
            if not isinstance(value, dict) or set(value) != {"size", "counts"}:
                raise InputError(f"{where}.mask must be a COCO RLE object {{\"size\": [h, w], \"counts\": ...}}.")
            try:
                value = decode_rle(value)
            except Exception as e:  # pycocotools' own errors on a damaged RLE
                raise InputError(f"{where}.mask is not a valid COCO RLE ({e}).") from None
        elif not isinstance(value, list):
            raise InputError(f"{where}.{kind} must be a list of numbers.")
        out.append(Prompt(kind, item.get("frame", default_frame), item.get("obj", 1), source=where, **{kind: value}))
    return out


def run_track_request(model, predictor, video: bytes | None, frames: list[bytes], prompts: list[Prompt], config
                      ) -> dict:
    """Track ``prompts`` through the uploaded clip (on the model thread): ``{"frames", "size", "objects",
    "per_frame"}`` with ``track.json``'s per-frame records."""
    if is_video_model(model) and model.device.type == "meta":
        raise InputError("this server runs its SAM 2 model from an export: video tracking needs the torch model "
                         "(serve it without --onnx-dir).")
    with tempfile.TemporaryDirectory(prefix="swiftsam-track-") as tmpdir:
        source = open_upload(video, frames, config.max_track_frames, config.max_pixels, config.max_upload_bytes,
                             tmpdir)
        try:
            n, hw = len(source), (source.height, source.width)
            grouped = group_prompts(prompts, n, hw)
            rows = [frame_record(f, results) for f, results in
                    track_objects(model, source, grouped, predictor_factory=lambda: predictor)]
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    return {"frames": n, "size": list(hw), "objects": sorted({p.obj for p in prompts}), "per_frame": rows}



# ---------------------------------------------------------------------------------------------- sessions
class SessionsFullError(Exception):
    """Every tracking session slot is in use (HTTP 503)."""


class TrackSessions:
    """The live tracking sessions of a server (used on its model thread only: no locking)."""

    def __init__(self, model, config) -> None:
        self.model, self.config = model, config
        self.sessions: dict[str, tuple[object, float]] = {}  # id -> (StreamingSession, last used)

    def _check_model(self) -> None:
        if not is_video_model(self.model) or self.model.device.type == "meta":
            raise InputError(f"tracking sessions need a SAM 2 model run by torch (this server runs "
                             f"{self.model.zoo_name or 'an image-only model'}); send the whole clip to POST /v1/track "
                             f"instead.")

    def _get(self, sid: str):
        entry = self.sessions.get(sid)
        if entry is None:
            raise FileNotFoundError(f"no tracking session {sid!r} (closed, or idle for more than "
                                    f"{self.config.track_session_idle_s:g} s): start one with POST /v1/track/sessions.")
        self.sessions[sid] = (entry[0], time.monotonic())
        return entry[0]

    def _make_room(self) -> None:
        now = time.monotonic()
        for sid, (_, used) in list(self.sessions.items()):
            if now - used > self.config.track_session_idle_s:
                del self.sessions[sid]
        if len(self.sessions) >= self.config.max_track_sessions:
            raise SessionsFullError(f"all {self.config.max_track_sessions} tracking sessions are in use "
                                    f"(--max-track-sessions): close one with DELETE /v1/track/sessions/ID")

    def _result(self, sid: str, session, obj_ids, logits) -> dict:
        return {"session": sid, **frame_record(session.frame_idx, memory_results(obj_ids, logits)),
                "size": [session.height, session.width]}

    def _prompt(self, session, prompts: list[Prompt]):
        hw = (session.height, session.width)
        current = session.frame_idx
        wrong = [p.source for p in prompts if p.frame != current]
        if wrong:
            raise InputError(f"{wrong[0]}: a session's prompts are on its current frame ({current}); leave the frame "
                             f"out or give {current}.")
        grouped = group_prompts(prompts, current + 1, hw).get(current, {})
        out = None
        for obj, g in sorted(grouped.items()):
            try:
                if g.mask is not None:
                    out = session.add_prompt(obj, mask=g.mask)
                else:
                    out = session.add_prompt(obj, points=g.points, labels=g.labels, box=g.box)
            except InputError as e:
                raise InputError(f"{g.where}: {e}") from None
        return out

    def start(self, frame: np.ndarray, prompts_text: str | None) -> dict:
        from ..video.streaming import StreamingSession

        self._check_model()
        prompts = [] if prompts_text is None else parse_track_prompts(prompts_text, self.config.max_prompts)
        self._make_room()
        session = StreamingSession(self.model, non_overlap_masks=True)
        session.start(frame)
        out = self._prompt(session, prompts) if prompts else None
        sid = secrets.token_urlsafe(12)
        self.sessions[sid] = (session, time.monotonic())
        if out is None:
            return {"session": sid, "frame": 0, "objects": {}, "size": [session.height, session.width]}
        return self._result(sid, session, *out)

    def prompt(self, sid: str, prompts_text: str | None) -> dict:
        session = self._get(sid)
        prompts = parse_track_prompts(prompts_text, self.config.max_prompts, default_frame=session.frame_idx)
        return self._result(sid, session, *self._prompt(session, prompts))

    def frame(self, sid: str, frame: np.ndarray) -> dict:
        session = self._get(sid)
        return self._result(sid, session, *session.track(frame))

    def close(self, sid: str) -> dict:
        self._get(sid)
        del self.sessions[sid]
        return {"session": sid, "closed": True}
