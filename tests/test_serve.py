"""swiftsam serve: the HTTP app (routes, dynamic batching, cache, limits, metrics), its CLI, the browser demo in
headless Chromium (skipped where Chromium is absent) and the Ray recipe's missing-package error."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[test]')")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from swiftsam.masks import decode_rle  # noqa: E402
from swiftsam.predictor import Predictor  # noqa: E402
from swiftsam.serve.app import app_state, create_app  # noqa: E402
from swiftsam.serve.limits import ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    import swiftsam

    return Predictor(swiftsam.load("swiftsam-r18", input_size=256), engine="torch")


def _image(seed: int, hw=(96, 128)) -> np.ndarray:
    rng = np.random.RandomState(seed)
    img = np.zeros((*hw, 3), np.uint8) + rng.randint(0, 60, 3).astype(np.uint8)
    h, w = hw
    y0, x0 = rng.randint(0, h // 2), rng.randint(0, w // 2)
    img[y0: y0 + h // 3, x0: x0 + w // 3] = rng.randint(150, 255, 3)  # one bright object
    return img


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _files(data: bytes):
    return {"image": ("image.png", data, "image/png")}


class CountingEngine:
    """Counts the engine's encode / decode calls (and the images encoded) on a Predictor, for a test's duration."""

    def __init__(self, predictor: Predictor) -> None:
        self.engine = predictor.engine
        self.encode_calls = self.decode_calls = self.images = 0

    def __enter__(self):
        encode, decode = self.engine.encode, self.engine.decode

        def counted_encode(x):
            self.encode_calls += 1
            self.images += x.shape[0]
            return encode(x)

        def counted_decode(*args):
            self.decode_calls += 1
            return decode(*args)

        self.engine.encode, self.engine.decode = counted_encode, counted_decode
        return self

    def __exit__(self, *exc):
        del self.engine.encode, self.engine.decode  # back to the class's methods


async def _concurrently(app, requests: list[dict]) -> list[httpx.Response]:
    """``requests`` (httpx.post keywords with ``url``) sent at once to ``app`` (with its lifespan)."""
    inner = app.app
    async with inner.router.lifespan_context(inner):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post(**r) for r in requests))


def _segment_request(data: bytes, prompts: dict) -> dict:
    return {"url": "/v1/segment", "files": _files(data), "data": {"prompts": json.dumps(prompts)}}


# ------------------------------------------------------------------------------------------------ routes
def test_segment_matches_the_predictor(predictor):
    img = _image(1)
    box, point = [20, 15, 90, 70], [50, 40]
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/v1/segment", files=_files(_png(img)),
                        data={"prompts": json.dumps({"boxes": [box], "points": [[[*point, 1]]]})})
    assert r.status_code == 200, r.text
    body = r.json()
    predictor.set_image(img)
    masks, scores, _ = predictor.predict(np.array([point]), np.array([1]), box=np.array(box), multimask_output=False)
    got = decode_rle(body["masks"][0])
    assert got.shape == img.shape[:2]
    assert np.array_equal(got, masks[0])
    assert body["scores"][0] == pytest.approx(float(scores[0]), abs=1e-5)
    ys, xs = np.nonzero(masks[0])
    if len(xs):
        assert body["boxes"][0] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_multimask_returns_three_masks_per_prompt(predictor):
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/v1/segment", files=_files(_png(_image(2))),
                        data={"prompts": json.dumps({"points": [[[30, 30, 1]], [[60, 50, 1], [10, 10, 0]]],
                                                     "multimask": True})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["masks"]) == 2 and all(len(m) == 3 for m in body["masks"])
    assert all(len(s) == 3 for s in body["scores"])


def test_embed_is_float16_npy_with_geometry(predictor):
    img = _image(3)
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/v1/embed", files=_files(_png(img)))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert arr.dtype == np.float16 and arr.shape == (1, *predictor.contract.embedding_shape)
    geometry = json.loads(r.headers["x-swiftsam-geometry"])
    assert geometry["original_size"] == [96, 128] and geometry["prompt_size"] == 1024
    assert geometry["prompt_scale"] == [pytest.approx(1024 / 128), pytest.approx(768 / 96)]
    predictor.set_image(img)
    expected = predictor.get_image_embedding().numpy()
    assert np.allclose(arr.astype(np.float32), expected, atol=1e-2, rtol=1e-3)


def test_everything_returns_coco_rle_records(predictor):
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/v1/everything", files=_files(_png(_image(4))),
                        data={"options": json.dumps({"points_per_side": 4, "pred_iou_thresh": 0.0,
                                                     "stability_score_thresh": 0.0})})
        bad = client.post("/v1/everything", files=_files(_png(_image(4))),
                          data={"options": json.dumps({"points_per_side": 1000})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["records"]) > 0
    rec = body["records"][0]
    assert set(rec) >= {"segmentation", "area", "bbox", "predicted_iou", "stability_score"}
    assert decode_rle(rec["segmentation"]).shape == (96, 128)
    assert bad.status_code == 400 and "points_per_side" in bad.json()["detail"]


def test_health_models_metrics(predictor):
    with TestClient(create_app(predictor, ServeConfig())) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        models = client.get("/v1/models").json()["models"]
        assert models[0]["name"] == "swiftsam-r18"
        assert models[0]["contract"]["image"]["input_size"] == 256
        client.post("/v1/segment", files=_files(_png(_image(5))), data={"prompts": '{"boxes": [[1, 1, 50, 50]]}'})
        text = client.get("/metrics").text
    assert 'swiftsam_requests_total{endpoint="/v1/segment",status="200"} 1' in text
    assert "swiftsam_encoder_calls_total 1" in text
    assert "# TYPE swiftsam_request_seconds histogram" in text


def test_page_is_served(predictor):
    with TestClient(create_app(predictor, ServeConfig(token="s3cret"))) as client:
        page = client.get("/")  # open without the token: the page asks for it
        script = client.get("/static/app.js")
    assert page.status_code == 200 and "<canvas" in page.text
    assert script.status_code == 200 and "/v1/embed" in script.text


# ------------------------------------------------------------------------------------------------ batching
def test_concurrent_requests_share_one_encoder_and_one_decoder_call(predictor):
    n = 4
    images = [_image(10 + i) for i in range(n)]
    prompts = [{"boxes": [[5 + i, 5, 70, 60 + i]], "points": [[[40, 30 + i, 1]]]} for i in range(n)]
    reqs = [_segment_request(_png(img), p) for img, p in zip(images, prompts)]
    # a long wait: the batch closes when all n have arrived, never on the clock
    app = create_app(predictor, ServeConfig(max_batch=n, batch_wait_ms=10_000))
    with CountingEngine(predictor) as counts:
        batched = asyncio.run(_concurrently(app, reqs))
    assert [r.status_code for r in batched] == [200] * n, [r.text for r in batched]
    assert counts.encode_calls == 1 and counts.images == n
    assert counts.decode_calls == 1
    assert app_state(app).metrics.get("swiftsam_batches_total") == 1

    sequential_app = create_app(predictor, ServeConfig(max_batch=1))
    with CountingEngine(predictor) as counts, TestClient(sequential_app) as client:
        sequential = [client.post(**r) for r in reqs]
    assert counts.encode_calls == n and counts.decode_calls == n
    for b, s in zip(batched, sequential):
        bj, sj = b.json(), s.json()
        mb, ms = decode_rle(bj["masks"][0]), decode_rle(sj["masks"][0])
        # batched convolutions and matmuls may round differently in the last bits: a handful of edge pixels at most
        assert (mb != ms).sum() <= 0.001 * mb.size
        assert bj["scores"][0] == pytest.approx(sj["scores"][0], abs=1e-4)


def test_same_image_is_encoded_once_and_cached(predictor):
    data = _png(_image(20))
    reqs = [_segment_request(data, {"points": [[[20 + 10 * i, 30, 1]]]}) for i in range(3)]
    app = create_app(predictor, ServeConfig(max_batch=3, batch_wait_ms=10_000))
    with CountingEngine(predictor) as counts:
        out = asyncio.run(_concurrently(app, reqs))
        assert [r.status_code for r in out] == [200] * 3
        assert counts.encode_calls == 1 and counts.images == 1  # one image in three requests
        later = asyncio.run(_concurrently(app, [reqs[0], reqs[1], {"url": "/v1/embed", "files": _files(data)}]))
        assert [r.status_code for r in later] == [200] * 3
        assert counts.encode_calls == 1  # from the cache
    assert later[0].json() == out[0].json()
    state = app_state(app)
    assert state.metrics.get("swiftsam_cache_hits_total") == 3


def test_cache_is_bounded_by_bytes():
    from swiftsam.serve.cache import CachedImage, EmbeddingCache

    entry = lambda: CachedImage((torch.zeros(1, 4, 8, 8),), (10, 10))  # noqa: E731  1 KiB each
    cache = EmbeddingCache(max_bytes=3 * 1024)
    for k in "abcd":
        cache.put(k, entry())
    assert len(cache) == 3 and cache.nbytes == 3 * 1024
    assert cache.get("a") is None  # the least recently used went first
    cache.get("b")
    cache.put("e", entry())
    assert cache.peek("b") is not None and cache.peek("c") is None
    cache.put("huge", CachedImage((torch.zeros(1, 4, 64, 64),), (1, 1)))  # larger than the cache: not kept
    assert cache.peek("huge") is None and len(cache) == 3


# ------------------------------------------------------------------------------------------------ limits and safety
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its data is tiny: a decompression-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bad_requests_get_a_clear_4xx_and_the_server_goes_on(predictor):
    good = _png(_image(30))
    jpeg = _jpeg(_image(30))
    box = json.dumps({"boxes": [[1, 1, 40, 40]]})
    cases = [
        ("garbage bytes", {"files": _files(b"\x00garbage" * 50), "data": {"prompts": box}}, 400, "not an image"),
        ("truncated JPEG", {"files": _files(jpeg[: len(jpeg) // 2]), "data": {"prompts": box}}, 400, "truncated"),
        ("huge dimensions", {"files": _files(_png_claiming(60_000, 60_000)), "data": {"prompts": box}}, 413,
         "pixels"),
        ("bad JSON", {"files": _files(good), "data": {"prompts": "{boxes: [1,2"}}, 400, "not valid JSON"),
        ("NaN box", {"files": _files(good), "data": {"prompts": '{"boxes": [[NaN, 1, 20, 20]]}'}}, 400, "NaN"),
        ("box outside", {"files": _files(good), "data": {"prompts": '{"boxes": [[1, 1, 900, 20]]}'}}, 400, "outside"),
        ("bad label", {"files": _files(good), "data": {"prompts": '{"points": [[[5, 5, 7]]]}'}}, 400, "labels"),
        ("no prompts", {"files": _files(good), "data": {}}, 400, "'prompts' is missing"),
        ("empty prompts", {"files": _files(good), "data": {"prompts": "{}"}}, 400, "neither boxes nor points"),
        ("too many prompts", {"files": _files(good), "data": {"prompts": json.dumps({"boxes": [[1, 1, 9, 9]] * 5})}},
         400, "limit of 4"),
        ("no image", {"data": {"prompts": box}}, 400, "multipart"),
        ("empty image", {"files": _files(b""), "data": {"prompts": box}}, 400, "empty"),
    ]
    with TestClient(create_app(predictor, ServeConfig(max_prompts=4, max_pixels=1_000_000))) as client:
        for name, kwargs, status, words in cases:
            r = client.post("/v1/segment", **kwargs)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert words in r.json()["detail"], (name, r.json())
        not_form = client.post("/v1/segment", content=b"{}", headers={"content-type": "application/json"})
        assert not_form.status_code == 400 and "multipart" in not_form.json()["detail"]
        assert client.get("/healthz").status_code == 200
        ok = client.post("/v1/segment", files=_files(good), data={"prompts": box})
        assert ok.status_code == 200


def test_upload_over_the_limit_is_413(predictor):
    big = np.random.RandomState(0).randint(0, 255, (400, 400, 3), np.uint8)  # ~480 KB as PNG
    with TestClient(create_app(predictor, ServeConfig(max_upload_mb=0.1))) as client:
        r = client.post("/v1/embed", files=_files(_png(big)))
        assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]
        assert client.post("/v1/embed", files=_files(_png(_image(1)))).status_code == 200


def test_bearer_token(predictor):
    data = _png(_image(40))
    with TestClient(create_app(predictor, ServeConfig(token="s3cret"))) as client:
        assert client.get("/healthz").status_code == 200
        missing = client.post("/v1/embed", files=_files(data))
        wrong = client.post("/v1/embed", files=_files(data), headers={"Authorization": "Bearer nope"})
        assert missing.status_code == 401 and wrong.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics").status_code == 401
        ok = client.post("/v1/embed", files=_files(data), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def _blocked(app):
    """Occupy the app's model thread until the returned event is set."""
    release = threading.Event()
    state = app_state(app)

    async def block():
        try:
            await state.batcher.call(lambda: release.wait(30))
        except asyncio.TimeoutError:  # the blocker's own wait; the model thread stays busy until released
            pass

    return release, block


def test_full_queue_is_503_with_retry_after(predictor):
    app = create_app(predictor, ServeConfig(max_queue=1, batch_wait_ms=0))
    release, block = _blocked(app)
    reqs = [_segment_request(_png(_image(50 + i)), {"boxes": [[1, 1, 30, 30]]}) for i in range(3)]

    async def scenario():
        inner = app.app
        async with inner.router.lifespan_context(inner):
            blocker = asyncio.create_task(block())
            await asyncio.sleep(0.2)  # the model thread now runs the blocker; the queue is empty
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                pending = [asyncio.create_task(client.post(**r)) for r in reqs]
                done = []
                while len(done) < 2:  # two of three are refused at once: one fits the queue
                    await asyncio.sleep(0.05)
                    done = [t for t in pending if t.done()]
                release.set()
                out = await asyncio.gather(*pending)
            await blocker
            return out

    out = asyncio.run(scenario())
    codes = sorted(r.status_code for r in out)
    assert codes == [200, 503, 503], [r.text for r in out]
    refused = [r for r in out if r.status_code == 503][0]
    assert refused.headers["retry-after"] == "1" and "busy" in refused.json()["detail"]


def test_request_timeout_is_504(predictor):
    app = create_app(predictor, ServeConfig(request_timeout_s=2.0, batch_wait_ms=0))
    release, block = _blocked(app)

    async def scenario():
        inner = app.app
        async with inner.router.lifespan_context(inner):
            blocker = asyncio.create_task(block())
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                r = await client.post(**_segment_request(_png(_image(60)), {"boxes": [[1, 1, 30, 30]]}))
            release.set()
            await blocker
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                after = await client.post(**_segment_request(_png(_image(60)), {"boxes": [[1, 1, 30, 30]]}))
            return r, after

    r, after = asyncio.run(scenario())
    assert r.status_code == 504 and "timeout" in r.json()["detail"]
    assert after.status_code == 200  # the timed-out job was dropped, the server goes on


def test_no_pickle_in_the_serve_package():
    from pathlib import Path

    import swiftsam.serve

    for path in Path(swiftsam.serve.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_checks_settings_before_loading(capsys):
    from swiftsam.cli import main

    assert main(["serve", "--max-batch", "0"]) == 2
    assert "max_batch=0" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_cli_without_the_serve_extra_says_what_to_install(monkeypatch, capsys):
    import sys

    from swiftsam.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve"]) == 2
    assert "pip install 'swiftsam[serve]'" in capsys.readouterr().err


def test_cli_help_lists_serve(capsys):
    from swiftsam.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--max-upload-mb", "--max-pixels", "--max-prompts", "--max-batch", "--batch-wait-ms", "--token",
                   "--device", "--host", "--port"):
        assert option in out


# ------------------------------------------------------------------------------------------------ Ray
def test_ray_recipe_says_what_to_install(monkeypatch):
    import sys

    from swiftsam.optional import MissingDependencyError
    from swiftsam.serve import ray_serve

    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed (it is not, here)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ray\[serve\]'"):
        ray_serve.deployment("swiftsam-r18")


# ------------------------------------------------------------------------------------------------ the browser demo
@pytest.fixture
def live_server(predictor):
    """The app on a loopback port, in a thread (uvicorn), for a real browser."""
    import socket

    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, ServeConfig()), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)
    sock.close()


def _shared_image(tmp_path):
    from tests.conftest import SHARED

    found = sorted((SHARED / "coco-mini" / "val2017").glob("*.jpg"))[:1]
    if found:
        return found[0]
    path = tmp_path / "synthetic.png"  # without the shared data: a synthetic image
    Image.fromarray(_image(70, (240, 320))).save(path)
    return path


@pytest.mark.parametrize("decoder", ["browser", "server"])
def test_browser_demo_draws_the_mask_that_segment_gives(live_server, tmp_path, decoder):
    from tests.cdp_pipe import Browser, find_chromium
    from swiftsam.serve.app import ORT_DIST

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    image_path = _shared_image(tmp_path)
    with Image.open(image_path) as im:
        w, h = im.size
    click = (w * 0.5, h * 0.5)
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.navigate(live_server + ("/?decoder=server" if decoder == "server" else "/"))
        browser.set_file("#file", image_path)
        browser.wait_for("window.swiftsam.ready || window.swiftsam.error", timeout=120)
        assert browser.evaluate("window.swiftsam.error") is None
        mode = browser.evaluate("window.swiftsam.mode")
        assert mode == ("onnxruntime-web" if ORT_DIST.is_dir() and decoder == "browser" else "server")
        rect = browser.evaluate("JSON.stringify(document.getElementById('overlay').getBoundingClientRect())")
        rect = json.loads(rect)
        browser.click(rect["left"] + click[0] * rect["width"] / w, rect["top"] + click[1] * rect["height"] / h)
        browser.wait_for("window.swiftsam.decodes >= 1 && !window.swiftsam.busy", timeout=60)
        assert browser.evaluate("window.swiftsam.error") is None
        drawn = np.array(list(browser.evaluate("Array.from(window.swiftsam.mask).join('')")), dtype=np.uint8)
        drawn = drawn.reshape(h, w).astype(bool)
        # the canvas shows it: overlay pixels painted with the mask colour (alpha is premultiplied: values round)
        painted = browser.evaluate("""(() => { const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 100 && d[i + 2] > 200 && d[i] < 60) n++;
            return n; })()""")
        browser.screenshot(tmp_path / f"serve-browser-demo-{decoder}.png")
        artifacts = os.environ.get("SWIFTSAM_TEST_ARTIFACTS")  # where CI keeps the screenshot
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            browser.screenshot(Path(artifacts) / f"serve-browser-demo-{decoder}.png")
    finally:
        browser.close()
    assert drawn.sum() > 0
    assert painted >= 0.95 * drawn.sum()  # the points drawn on top cover a few pixels
    with httpx.Client(base_url=live_server, timeout=60) as client:
        r = client.post("/v1/segment", files={"image": (image_path.name, image_path.read_bytes())},
                        data={"prompts": json.dumps({"points": [[[*click, 1]]]})})
    assert r.status_code == 200, r.text
    expected = decode_rle(r.json()["masks"][0])
    iou = (drawn & expected).sum() / max(1, (drawn | expected).sum())
    if mode == "server":  # the page's own RLE decoding of /v1/segment's answer
        assert np.array_equal(drawn, expected)
    assert iou > 0.98, iou  # the browser decodes the float16 embedding: a few edge pixels may differ


def test_exported_decoder_on_the_embedding_gives_the_segment_mask(predictor):
    """What the page does in the browser, done with onnxruntime in Python: /v1/decoder.onnx on /v1/embed's float16
    embedding, with SAM's flat prompt (point + padding point) in the prompt frame, matches /v1/segment."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    img = _image(80, (120, 160))
    click = [70.0, 50.0]
    with TestClient(create_app(predictor, ServeConfig())) as client:
        graph = client.get("/v1/decoder.onnx")
        assert graph.status_code == 200, graph.text
        embed = client.post("/v1/embed", files=_files(_png(img)))
        seg = client.post("/v1/segment", files=_files(_png(img)),
                          data={"prompts": json.dumps({"points": [[[*click, 1]]]})})
    g = json.loads(embed.headers["x-swiftsam-geometry"])
    sx, sy = g["prompt_scale"]
    mh, mw = g["mask_input_size"]
    session = ort.InferenceSession(graph.content, providers=["CPUExecutionProvider"])
    masks, iou, _ = session.run(None, {
        "image_embeddings": np.load(io.BytesIO(embed.content), allow_pickle=False).astype(np.float32),
        "point_coords": np.array([[[click[0] * sx, click[1] * sy], [0, 0]]], np.float32),
        "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, mh, mw), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(g["original_size"], np.float32)})
    token = int(np.argmax(iou[0, 1:]) + 1) if g["multimask_only"] else 0
    here = masks[0, token] > g["mask_threshold"]
    expected = decode_rle(seg.json()["masks"][0])
    assert here.shape == expected.shape == img.shape[:2]
    assert (here & expected).sum() / max(1, (here | expected).sum()) > 0.98
