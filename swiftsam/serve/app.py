"""The HTTP app: FastAPI routes over one ``Predictor``, its ``Batcher`` and embedding cache, behind a guard that
enforces the bearer token and the upload limit and counts every answer.

Routes (JSON errors are ``{"detail": "what was wrong and what to do"}``):

* ``GET /healthz``; ``GET /v1/models`` (the model, its contract, the engine, the limits); ``GET /metrics``
  (Prometheus text).
* ``POST /v1/embed`` (multipart ``image``): the embedding as float16 ``.npy`` (``.npz`` of the named levels for
  a model with high-resolution levels), the geometry as JSON in the ``X-Swiftsam-Geometry`` header.
* ``POST /v1/segment`` (multipart ``image`` + ``prompts`` JSON, ``limits.parse_prompts``): COCO RLE masks,
  scores and XYXY boxes at the image's size.
* ``POST /v1/everything`` (multipart ``image`` + optional ``options`` JSON): ``MaskGenerator`` records (COCO RLE).
* ``POST /v1/track`` (multipart ``video`` or ``frames`` + ``prompts`` JSON, ``track``): every frame's masks (COCO
  RLE) with ``swiftsam track``'s prompts and trackers; ``/v1/track/sessions`` (start, prompts, frames, DELETE):
  frames sent one at a time (SAM 2 models, ``track.TrackSessions``).
* Images as multipart ``image``, or as ``image_url`` for URLs under ``allow_urls`` (``fetch``; none by default).
* ``GET /v1/decoder.onnx``: the model's ``sam_decoder.onnx`` (SAM's published interface), for the browser demo.
* ``GET /``: the browser demo (``static/``), with onnxruntime-web under ``/ort/`` once ``web/`` is built.

Status codes: 400 bad input, 401 no or wrong token, 403 an image URL outside the allow-list, 404, 413 body or
image too large, 501 a feature this install lacks, 503 queue full (``Retry-After``), 504 request timeout, 500 a bug
of ours (the server goes on).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EngineError, InputError, SwiftSamError
from ..image_io import ImageTooLargeError, load_image_bytes
from ..masks import encode_rle, rle_bbox
from ..modeling.prompt_decoder import choose_outputs
from ..optional import MissingDependencyError, require
from ..predictor import Predictor
from ..transforms import frame_shape, postprocess_masks
from ..version import __version__
from .batching import Batcher, Decoded, QueueFullError
from .cache import CachedImage, EmbeddingCache
from .fetch import URLNotAllowedError, fetch_image
from .limits import ServeConfig, parse_everything_options, parse_prompts
from .metrics import Metrics
from .track import SessionsFullError, TrackSessions, parse_track_prompts, run_track_request

fastapi = require("fastapi", "swiftsam serve")
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

log = logging.getLogger("swiftsam.serve")

STATIC = Path(__file__).parent / "static"
WEB = Path(__file__).parent / "web"  # package.json: onnxruntime-web, installed by `make web` (npm ci)
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
ROUTES = ("/", "/healthz", "/metrics", "/v1/models", "/v1/embed", "/v1/segment", "/v1/everything",
          "/v1/track", "/v1/track/sessions", "/v1/decoder.onnx")
PUBLIC = ("/healthz", "/static/", "/ort/", "/favicon.ico")  # open without the token (the page asks for it)


def _is_public(path: str) -> bool:
    return path == "/" or path.startswith(PUBLIC)


class ServerState:
    """What the routes share: the predictor, settings, cache, counters and the batcher."""

    def __init__(self, predictor: Predictor, config: ServeConfig) -> None:
        self.predictor = predictor
        self.config = config
        self.contract = predictor.model.contract
        self.model_name = predictor.model.zoo_name or "model"
        self.cache = EmbeddingCache(int(config.cache_mb * 1024 * 1024))
        self.metrics = Metrics()
        self.batcher = Batcher(predictor, self.cache, self.metrics, config)
        self.track_sessions = TrackSessions(predictor.model, config)
        self._decoder: Path | None = None
        m = self.metrics
        m.gauges.update({
            "swiftsam_cache_bytes": lambda: self.cache.nbytes,
            "swiftsam_cache_entries": lambda: len(self.cache),
            "swiftsam_queue_depth": self.batcher.depth,
        })

    def decoder_path(self) -> Path:
        """``sam_decoder.onnx`` of the served model: exported once into the export cache (model thread only)."""
        if self._decoder is not None:
            return self._decoder
        model = self.predictor.model
        export_dir = getattr(model, "export_dir", None)
        if model.device.type == "meta":  # a model read from an export folder: its own graph, if it has one
            path = Path(export_dir or "") / "sam_decoder.onnx"
            if export_dir is None or not path.is_file():
                raise FileNotFoundError(f"the export folder {export_dir} has no sam_decoder.onnx: export it with "
                                        f"`swiftsam export {self.model_name} --out DIR` (all parts) and serve that.")
        else:
            from ..engines.ort_engine import onnx_cache_dir
            from ..export.onnx import cached_export

            path = cached_export(model, onnx_cache_dir(), ["sam_decoder"]) / "sam_decoder.onnx"
        self._decoder = path
        return path

    def geometry(self, original_size: tuple[int, int], key: str) -> dict:
        """How the browser (or any client decoding itself) maps pixels into the prompt frame and reads outputs."""
        c = self.contract
        h, w = original_size
        fh, fw = frame_shape(original_size, c.image.prompt_size, c.image.geometry)
        return {
            "model": self.model_name, "image_sha256": key, "original_size": [h, w],
            "input_size": c.image.input_size, "prompt_size": c.image.prompt_size, "geometry": c.image.geometry,
            "frame_size": [fh, fw], "prompt_scale": [fw / w, fh / h],  # x, y pixels -> prompt frame
            "features": [{"name": f.name, "shape": [1, f.channels, f.size, f.size]} for f in c.features],
            "dtype": "float16", "mask_input_size": list(c.mask_input_size), "mask_threshold": 0.0,
            "box_mask_prior": c.box_mask_prior, "multimask_only": c.multimask_only,
            "dynamic_multimask": c.dynamic_multimask,
        }


# ---------------------------------------------------------------------------------------------- errors
def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def answers(fn: Callable) -> Callable:
    """Every failure of a route as a JSON answer with its status; nothing escapes to take the server down."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except ImageTooLargeError as e:
            return _error(413, str(e))
        except URLNotAllowedError as e:
            return _error(403, str(e))
        except InputError as e:
            return _error(400, str(e))
        except QueueFullError as e:
            return _error(503, f"the server is busy ({e}); retry shortly.", {"Retry-After": "1"})
        except SessionsFullError as e:
            return _error(503, f"{e}, or retry later.", {"Retry-After": "30"})
        except asyncio.TimeoutError:
            return _error(504, "the request took longer than this server's timeout; retry, or send a smaller "
                               "request (fewer prompts, a smaller image).")
        except MissingDependencyError as e:
            return _error(501, str(e))
        except FileNotFoundError as e:
            return _error(404, str(e))
        except (EngineError, SwiftSamError) as e:
            return _error(500, str(e))
        except Exception as e:  # a bug of ours: logged, answered, and the server goes on
            log.exception("request failed")
            return _error(500, f"internal error ({type(e).__name__}); the server logged it.")

    return wrapper


# ---------------------------------------------------------------------------------------------- guard
class Guard:
    """Pure ASGI: bearer token (401), request body limit (413, read at most the limit), per-route counters."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.limit = state.config.max_upload_bytes
        token = state.config.token
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "/v1/track/sessions" if path.startswith("/v1/track/sessions/") else "other"
        status = [500]
        t0 = time.perf_counter()

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_counted, path)
        finally:
            m = self.state.metrics
            m.inc("swiftsam_requests_total", endpoint=route, status=str(status[0]))
            m.observe("swiftsam_request_seconds", time.perf_counter() - t0, endpoint=route)
            if status[0] in (401, 413, 503):
                m.inc("swiftsam_rejected_total", reason={401: "auth", 413: "too_large", 503: "queue_full"}[status[0]])

    async def _handle(self, scope, receive, send, path: str):
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and not _is_public(path):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                msg = "this server needs a bearer token: send the header 'Authorization: Bearer TOKEN'."
                if given:
                    msg = "wrong bearer token (header 'Authorization: Bearer TOKEN')."
                return await _respond(send, 401, msg, {"www-authenticate": "Bearer"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = headers.get(b"content-length")
        too_large = (f"the request is larger than this server's limit of {self.state.config.max_upload_mb:g} MB "
                     f"(--max-upload-mb): send a smaller image (e.g. JPEG, or resized).")
        if length is not None:
            if not length.isdigit():
                return await _respond(send, 400, "bad Content-Length header.")
            if int(length) > self.limit:
                return await _respond(send, 413, too_large)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await _respond(send, 413, too_large)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _respond(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------- requests
async def _form(request: Request, max_files: int = 4) -> Any:
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise InputError(f"send a multipart/form-data body (field 'image', the image file), not {kind or 'nothing'}; "
                         f"e.g. curl -F image=@photo.jpg ...")
    try:
        return await request.form(max_files=max_files, max_fields=8)
    except Exception as e:  # the multipart parser's own errors: a damaged body
        raise InputError(f"could not read the multipart form ({getattr(e, 'detail', None) or e}).") from None


async def _field(form, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    data = await value.read()  # a field sent as a file
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"the form field {name!r} is not UTF-8 text.") from None


async def _image_bytes(state: ServerState, form) -> bytes:
    upload = form.get("image")
    url = form.get("image_url")
    if upload is not None and url is not None:
        raise InputError("send the image as 'image' (a file) or 'image_url', not both.")
    if url is not None:
        if not isinstance(url, str):
            raise InputError("the 'image_url' field must be text (the image's URL), not a file.")
        return await run_in_threadpool(fetch_image, url, state.config.allow_urls, state.config.max_upload_bytes,
                                       min(state.config.request_timeout_s, 30.0))
    if upload is None:
        raise InputError("the form has no 'image' field: send the image file as multipart field 'image' "
                         "(curl -F image=@photo.jpg ...), or its URL as 'image_url' where the server allows it.")
    if isinstance(upload, str):
        raise InputError("the 'image' field must be a file upload (curl -F image=@photo.jpg), not text.")
    return await upload.read()


async def _files(form, name: str) -> list[bytes]:
    out = []
    for upload in form.getlist(name):
        if isinstance(upload, str):
            raise InputError(f"the '{name}' field must be a file upload (curl -F {name}=@clip.mp4), not text.")
        out.append(await upload.read())
    return out


class ImageInput:
    """A request's image: its hash, and either its cached embedding or its decoded pixels."""

    def __init__(self, key: str, cached: CachedImage | None, pixels: np.ndarray | None) -> None:
        self.key, self.cached, self.pixels = key, cached, pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.cached.original_size if self.cached is not None else tuple(self.pixels.shape[:2])


async def _image(state: ServerState, form, use_cache: bool = True) -> ImageInput:
    data = await _image_bytes(state, form)
    key = hashlib.sha256(data).hexdigest()
    cached = state.cache.get(key) if use_cache else None
    if use_cache:
        state.metrics.inc("swiftsam_cache_hits_total" if cached is not None else "swiftsam_cache_misses_total")
    pixels = None
    if cached is None:
        pixels = await run_in_threadpool(load_image_bytes, data, state.config.max_pixels, True, "the uploaded image")
    return ImageInput(key, cached, pixels)


def _segment_result(state: ServerState, out: Decoded, original_size: tuple[int, int], multimask: bool) -> dict:
    c = state.contract
    low, iou = choose_outputs(out.low_res, out.iou, "multimask" if multimask else "single", **c.output_policy())
    masks, scores, boxes = [], [], []
    threshold = state.predictor.model.mask_threshold
    with torch.inference_mode():
        for i in range(low.shape[0]):  # one prompt at a time: bounded memory on large images
            up = postprocess_masks(low[i: i + 1].float(), original_size, c.image.prompt_size, c.image.geometry)[0]
            rles = encode_rle(up > threshold)  # encoded on the model's device: only the RLEs come back
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in (rle_bbox(r) for r in rles)]
            s = [round(float(v), 6) for v in iou[i].tolist()]
            if multimask:
                masks.append(rles), scores.append(s), boxes.append(xyxy)
            else:
                masks.append(rles[0]), scores.append(s[0]), boxes.append(xyxy[0])
    return {"image_size": list(original_size), "multimask": multimask, "masks": masks, "scores": scores,
            "boxes": boxes}


def _everything(state: ServerState, pixels: np.ndarray, options: dict) -> dict:
    from ..everything import MaskGenerator, NoMasksWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoMasksWarning)
        generator = MaskGenerator(state.predictor, output_mode="coco_rle", progress=False, **options)
        records = generator.generate(pixels)
    notes = [str(w.message) for w in caught if issubclass(w.category, NoMasksWarning)]
    return {"image_size": list(pixels.shape[:2]), "count": len(records), "records": records, "warnings": notes}


def _npy(levels: tuple[torch.Tensor, ...], names: list[str]) -> tuple[bytes, str]:
    arrays = [t.detach().to("cpu", torch.float16).numpy() for t in levels]
    buf = io.BytesIO()
    if len(arrays) == 1:
        np.save(buf, arrays[0], allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    np.savez(buf, **dict(zip(names, arrays)))  # plain arrays: np.load(..., allow_pickle=False) reads them
    return buf.getvalue(), "application/x-npz"


# ---------------------------------------------------------------------------------------------- the app
def create_app(predictor: Predictor, config: ServeConfig | None = None) -> Any:
    """The ASGI app serving ``predictor`` with ``config``'s limits (run it with uvicorn, or TestClient)."""
    require("python_multipart", "swiftsam serve (multipart uploads)")
    config = config or ServeConfig()
    state = ServerState(predictor, config)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.stop()

    app = FastAPI(title="swiftsam", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.swiftsam = state

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": state.model_name, "queue": state.batcher.depth()}

    @app.get("/v1/models")
    async def models():
        return {"models": [{"name": state.model_name, "engine": predictor.engine.describe(),
                            "contract": state.contract.to_dict(), "limits": config.public(),
                            "browser_decoder": _browser_decoder_state()}], "swiftsam": __version__}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/embed")
    @answers
    async def embed(request: Request):
        form = await _form(request)
        image = await _image(state, form)
        out = await state.batcher.submit(image.key, image.pixels, image.cached)
        body, kind = await run_in_threadpool(_npy, out.image.levels, [f.name for f in state.contract.features])
        geometry = state.geometry(out.image.original_size, image.key)
        return Response(body, media_type=kind, headers={"X-Swiftsam-Geometry": json.dumps(geometry),
                                                        "Access-Control-Expose-Headers": "X-Swiftsam-Geometry"})

    @app.post("/v1/segment")
    @answers
    async def segment(request: Request):
        form = await _form(request)
        image = await _image(state, form)
        req = parse_prompts(await _field(form, "prompts"), image.size, state.contract, config.max_prompts)
        out = await state.batcher.submit(image.key, image.pixels, image.cached, req.prompts)
        result = await run_in_threadpool(_segment_result, state, out, image.size, req.multimask)
        return JSONResponse(result)

    @app.post("/v1/everything")
    @answers
    async def everything(request: Request):
        form = await _form(request)
        options = parse_everything_options(await _field(form, "options"))
        image = await _image(state, form, use_cache=False)  # the generator encodes the image (and its crops)
        result = await state.batcher.call(functools.partial(_everything, state, image.pixels, options))
        return JSONResponse(result)

    @app.post("/v1/track")
    @answers
    async def track(request: Request):
        form = await _form(request, max_files=config.max_track_frames + 1)
        prompts = parse_track_prompts(await _field(form, "prompts"), config.max_prompts)
        videos, frames = await _files(form, "video"), await _files(form, "frames")
        if len(videos) > 1:
            raise InputError("send one 'video' field (a video file or a zip of frames).")
        job = functools.partial(run_track_request, predictor.model, predictor, videos[0] if videos else None,
                                frames, prompts, config)
        return JSONResponse(await state.batcher.call(job))

    async def frame_of(form) -> np.ndarray:
        data = await _image_bytes(state, form)
        return await run_in_threadpool(load_image_bytes, data, config.max_pixels, True, "the uploaded frame")

    sessions = state.track_sessions

    @app.post("/v1/track/sessions")
    @answers
    async def track_session_start(request: Request):
        form = await _form(request)
        frame, prompts = await frame_of(form), await _field(form, "prompts")
        return JSONResponse(await state.batcher.call(functools.partial(sessions.start, frame, prompts)))

    @app.post("/v1/track/sessions/{sid}/prompts")
    @answers
    async def track_session_prompts(sid: str, request: Request):
        form = await _form(request)
        prompts = await _field(form, "prompts")
        return JSONResponse(await state.batcher.call(functools.partial(sessions.prompt, sid, prompts)))

    @app.post("/v1/track/sessions/{sid}/frames")
    @answers
    async def track_session_frame(sid: str, request: Request):
        frame = await frame_of(await _form(request))
        return JSONResponse(await state.batcher.call(functools.partial(sessions.frame, sid, frame)))

    @app.delete("/v1/track/sessions/{sid}")
    @answers
    async def track_session_close(sid: str):
        return JSONResponse(await state.batcher.call(functools.partial(sessions.close, sid)))

    @app.get("/v1/decoder.onnx")
    @answers
    async def decoder_onnx():
        try:
            path = await state.batcher.call(state.decoder_path)
        except EngineError as e:  # no onnx package here, or the export failed: the page decodes on the server
            return _error(501, f"the browser decoder is not available on this server: {e}")
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{state.model_name}-sam_decoder.onnx")

    @app.get("/")
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if ORT_DIST.is_dir():
        app.mount("/ort", StaticFiles(directory=ORT_DIST), name="ort")
    return Guard(app, state)


def _browser_decoder_state() -> str:
    return "onnxruntime-web" if ORT_DIST.is_dir() else "absent (the page uses /v1/segment; build it: make web)"


def app_state(app: Any) -> ServerState:
    """The ``ServerState`` of an app ``create_app`` made (tests, the Ray deployment)."""
    inner = app.app if isinstance(app, Guard) else app
    return inner.state.swiftsam
