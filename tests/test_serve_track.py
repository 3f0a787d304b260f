"""swiftsam serve: `POST /v1/track` (a clip + `swiftsam track`'s prompts -> per-frame COCO RLEs, limits and 4xx
errors) and images by URL (`image_url`) only from the operator's allow-list (a local HTTP server)."""

from __future__ import annotations

import http.server
import io
import json
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[test]')")

from fastapi.testclient import TestClient  # noqa: E402

import swiftsam  # noqa: E402
from swiftsam.apps.video_track import Prompt, frame_record, group_prompts, track_objects  # noqa: E402
from swiftsam.masks import decode_rle  # noqa: E402
from swiftsam.predictor import Predictor  # noqa: E402
from swiftsam.serve.app import create_app  # noqa: E402
from swiftsam.serve.limits import ServeConfig  # noqa: E402
from swiftsam.video.frames import InMemoryFrames  # noqa: E402

from .conftest import randomize_  # noqa: E402

N, H, W = 4, 64, 96


def _frames(n=N):
    frames = []
    for k in range(n):
        im = np.full((H, W, 3), 30, np.uint8)
        im[10:44, 8 + 2 * k:40 + 2 * k] = (230, 60, 60)
        im[20:56, 50:90 - k] = (60, 200, 80)
        frames.append(im)
    return frames


def _png(im) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sam2_predictor():
    torch.manual_seed(0)
    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=128, depth=(1, 1, 1, 1)), seed=2).eval()
    return Predictor(model, engine="torch")


@pytest.fixture(scope="module")
def image_predictor():
    return Predictor(randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=1).eval(), engine="torch")


def _post_frames(client, frames, prompts, **extra):
    files = [("frames", (f"{k}.png", _png(im), "image/png")) for k, im in enumerate(frames)]
    return client.post("/v1/track", files=files, data={"prompts": json.dumps(prompts), **extra})


def test_track_two_objects_with_a_later_prompt_equals_the_library(sam2_predictor):
    prompts = ["box 8,10,40,44", {"box": [50, 20, 90, 56], "frame": 1, "obj": 2},
               {"point": [30, 20, 0], "frame": 2, "obj": 1}]
    with TestClient(create_app(sam2_predictor, ServeConfig())) as client:
        r = _post_frames(client, _frames(), prompts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames"] == N and body["size"] == [H, W] and body["objects"] == [1, 2]
    # the same prompts through swiftsam track's own code path
    want_prompts = [Prompt("box", box=(8, 10, 40, 44)), Prompt("box", 1, 2, box=(50, 20, 90, 56)),
                    Prompt("point", 2, 1, point=(30, 20, 0))]
    frames = InMemoryFrames(_frames())
    want = [frame_record(f, res) for f, res in
            track_objects(sam2_predictor.model, frames, group_prompts(want_prompts, N, (H, W)))]
    assert body["per_frame"] == json.loads(json.dumps(want))
    assert sorted(body["per_frame"][0]["objects"]) == ["1"] and sorted(body["per_frame"][1]["objects"]) == ["1", "2"]
    assert decode_rle(body["per_frame"][3]["objects"]["2"]["rle"]).shape == (H, W)


def test_track_a_zip_and_a_video_file_with_an_image_model(image_predictor, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, im in reversed(list(enumerate(_frames()))):  # frames are ordered by name, not by position
            z.writestr(f"clip/{k:05d}.png", _png(im))
    prompts = json.dumps(["box 8,10,40,44#3", "point 60,30@2#4"])
    with TestClient(create_app(image_predictor, ServeConfig())) as client:
        r = client.post("/v1/track", files={"video": ("clip.zip", buf.getvalue(), "application/zip")},
                        data={"prompts": prompts})
        assert r.status_code == 200, r.text
        rows = r.json()["per_frame"]
        assert [sorted(row["objects"]) for row in rows] == [["3"], ["3"], ["3", "4"], ["3", "4"]]
        cv2 = pytest.importorskip("cv2")
        path = str(tmp_path / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
        for im in _frames():
            writer.write(im[:, :, ::-1].copy())
        writer.release()
        with open(path, "rb") as f:
            r = client.post("/v1/track", files={"video": ("clip.mp4", f.read(), "video/mp4")},
                            data={"prompts": prompts})
        assert r.status_code == 200, r.text
        assert r.json()["frames"] == N and r.json()["objects"] == [3, 4]


def test_track_limits_and_bad_requests(image_predictor):
    config = ServeConfig(max_track_frames=3, max_pixels=7000, max_prompts=2)
    good = ["box 8,10,40,44"]
    with TestClient(create_app(image_predictor, config)) as client:
        cases = [
            (_post_frames(client, _frames(), good), 400, "4 frames, over this server's limit of 3"),
            (_post_frames(client, _frames(2), ["box 8,10,40"]), 400,
             "prompts[0] 'box 8,10,40': expected x0,y0,x1,y1: 4 finite numbers"),
            (_post_frames(client, _frames(2), ["box 8,10,40,44@5"]), 400, "frame 5 is past the video's end"),
            (_post_frames(client, _frames(2), ["circle 1,2"]), 400, "unknown prompt kind 'circle'"),
            (_post_frames(client, _frames(2), [{"box": [1, 2, 3, 4], "point": [1, 2]}]), 400, "exactly one of"),
            (_post_frames(client, _frames(2), [{"box": [1, 2, 3, float("nan")]}]), 400, "finite numbers"),
            (_post_frames(client, _frames(2), good * 3), 400, "over this server's limit of 2"),
            (_post_frames(client, _frames(2), []), 400, "non-empty JSON list"),
            (client.post("/v1/track", files=[("frames", ("0.png", _png(_frames(1)[0]), "image/png"))],
                         data={"prompts": "{not json"}), 400, "not valid JSON"),
            (client.post("/v1/track", data={"prompts": json.dumps(good)},
                         files={"other": ("x", b"x", "text/plain")}), 400, "send the clip as multipart field 'video'"),
            (client.post("/v1/track", files={"video": ("c.zip", b"PK\x03\x04garbage", "application/zip")},
                         data={"prompts": json.dumps(good)}), 400, "looks like a zip but cannot be read"),
        ]
        big = np.zeros((80, 96, 3), np.uint8)  # 7680 pixels > 7000
        cases.append((_post_frames(client, [big, big], good), 413, "pixels"))
        for r, status, text in cases:
            assert r.status_code == status and text in r.json()["detail"], (status, text, r.status_code, r.text)
        assert client.get("/healthz").status_code == 200  # the server goes on


# ---------------------------------------------------------------------------------------------- image URLs
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?to=", 1)[1])
            self.end_headers()
            return
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    img = np.zeros((48, 64, 3), np.uint8)
    img[10:30, 20:50] = 220
    _Handler.files = {"/ok/a.png": _png(img), "/other/a.png": _png(img),
                      "/ok/big.png": _png(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8))}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _segment_url(client, url):
    return client.post("/v1/segment", data={"image_url": url, "prompts": json.dumps({"boxes": [[20, 10, 50, 30]]})},
                       files={"unused": ("x", b"", "text/plain")})


def test_image_urls_only_from_the_allow_list(image_predictor, http_server):
    with TestClient(create_app(image_predictor, ServeConfig())) as client:  # default: no URL is fetched
        r = _segment_url(client, f"{http_server}/ok/a.png")
        assert r.status_code == 403 and "fetches no image URLs" in r.json()["detail"]
        assert "--allow-url" in r.json()["detail"]
    config = ServeConfig(allow_urls=(f"{http_server}/ok",), max_upload_mb=0.01)
    with TestClient(create_app(image_predictor, config)) as client:
        r = _segment_url(client, f"{http_server}/ok/a.png")
        assert r.status_code == 200, r.text
        assert r.json()["image_size"] == [48, 64] and len(r.json()["masks"]) == 1
        host = http_server.split("://")[1]
        for url, status, text in [
            (f"{http_server}/other/a.png", 403, "is not under this server's allowed URL prefixes"),
            (f"{http_server}/ok-not/a.png", 403, "not under"),
            (f"{http_server}/ok/../other/a.png", 400, "'..' path segments"),
            (f"http://user@{host}/ok/a.png", 400, "credentials"),
            ("file:///etc/passwd", 400, "must be an http:// or https:// URL"),
            (f"{http_server}/ok/missing.png", 400, "HTTP 404"),
            (f"{http_server}/ok/big.png", 413, "larger than this server's limit"),
        ]:
            r = _segment_url(client, url)
            assert r.status_code == status and text in r.json()["detail"], (url, r.status_code, r.text)
    config = ServeConfig(allow_urls=(f"{http_server}/",))
    with TestClient(create_app(image_predictor, config)) as client:  # the whole host, but a redirect is re-checked
        r = _segment_url(client, f"{http_server}/redirect?to=http://localhost:1/x.png")
        assert r.status_code == 403 and "redirects to" in r.json()["detail"]
        assert _segment_url(client, f"{http_server}/redirect?to={http_server}/other/a.png").status_code == 200
    with pytest.raises(swiftsam.errors.InputError, match="--allow-url 'ftp://x/'"):
        ServeConfig(allow_urls=("ftp://x/",))


# ---------------------------------------------------------------------------------------------- sessions
def test_track_sessions_equal_the_streaming_session(sam2_predictor):
    from swiftsam.apps.video_track import memory_results
    from swiftsam.video.streaming import StreamingSession

    frames = _frames()
    ref = StreamingSession(sam2_predictor.model, non_overlap_masks=True)
    ref.start(frames[0])
    want = [frame_record(0, memory_results(*ref.add_prompt(1, box=np.array([8, 10, 40, 44]))))]
    want.append(frame_record(1, memory_results(*ref.track(frames[1]))))
    ref.track(frames[2])
    want.append(frame_record(2, memory_results(*ref.add_prompt(2, box=np.array([50, 20, 90, 56])))))
    want.append(frame_record(3, memory_results(*ref.track(frames[3]))))
    want = json.loads(json.dumps(want))

    def image(k):
        return {"image": (f"{k}.png", _png(frames[k]), "image/png")}

    with TestClient(create_app(sam2_predictor, ServeConfig(max_track_sessions=1))) as client:
        r = client.post("/v1/track/sessions", files=image(0), data={"prompts": json.dumps(["box 8,10,40,44"])})
        assert r.status_code == 200, r.text
        sid = r.json()["session"]
        got = [r.json()]
        got.append(client.post(f"/v1/track/sessions/{sid}/frames", files=image(1)).json())
        assert client.post(f"/v1/track/sessions/{sid}/frames", files=image(2)).status_code == 200
        r = client.post(f"/v1/track/sessions/{sid}/prompts", data={"prompts": json.dumps(["box 50,20,90,56#2"])},
                        files={"unused": ("x", b"", "text/plain")})
        got.append(r.json())
        got.append(client.post(f"/v1/track/sessions/{sid}/frames", files=image(3)).json())
        assert [sorted(g["objects"]) for g in got] == [["1"], ["1"], ["1", "2"], ["1", "2"]]
        for g, w in zip(got, want):
            assert g["session"] == sid and g["size"] == [H, W]
            assert {k: g[k] for k in ("frame", "objects")} == w
        # errors: a prompt on another frame, a second session beyond the limit, an unknown or closed session
        r = client.post(f"/v1/track/sessions/{sid}/prompts", data={"prompts": json.dumps(["point 5,5@1"])},
                        files={"unused": ("x", b"", "text/plain")})
        assert r.status_code == 400 and "current frame (3)" in r.json()["detail"]
        r = client.post("/v1/track/sessions", files=image(0))
        assert r.status_code == 503 and "all 1 tracking sessions are in use" in r.json()["detail"]
        assert client.delete(f"/v1/track/sessions/{sid}").json() == {"session": sid, "closed": True}
        r = client.post(f"/v1/track/sessions/{sid}/frames", files=image(1))
        assert r.status_code == 404 and "no tracking session" in r.json()["detail"]
        assert client.post("/v1/track/sessions", files=image(0)).status_code == 200  # room again


def test_track_sessions_need_a_sam2_model(image_predictor):
    with TestClient(create_app(image_predictor, ServeConfig())) as client:
        r = client.post("/v1/track/sessions", files={"image": ("0.png", _png(_frames(1)[0]), "image/png")})
        assert r.status_code == 400 and "tracking sessions need a SAM 2 model" in r.json()["detail"]
