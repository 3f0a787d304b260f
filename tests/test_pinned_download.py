"""Checkpoints without a published sha256 (TinySAM's tinysam_42.3.pth): pinned in the cache on first download."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading

import pytest
import torch

import swiftsam
from swiftsam.errors import DownloadError
from swiftsam.zoo import registry
from swiftsam.zoo.hub import cached_path, download, pin_path
from tests.conftest import randomize_


class _Handler(http.server.SimpleHTTPRequestHandler):
    short_by = 0  # announce this many bytes more than are sent (a connection cut mid-file)

    def log_message(self, *args, **kwargs):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) + self.short_by))
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True


@pytest.fixture
def server(tmp_path):
    """A folder served on 127.0.0.1; ``state["short_by"]`` makes the server cut files short."""
    root = tmp_path / "www"
    root.mkdir()
    state = {"short_by": 0}

    class Handler(_Handler):
        @property
        def short_by(self):
            return state["short_by"]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def _unpublished(monkeypatch, base: str, name: str = "tinysam", **changes) -> registry.ModelEntry:
    """``name`` with its weights served by the test server and no published sha256."""
    entry = registry.get_entry(name)
    w = dataclasses.replace(entry.weights, urls=(f"{base}/{entry.weights.filename}",), sha256=None, **changes)
    new = dataclasses.replace(entry, weights=w)
    monkeypatch.setitem(registry._REGISTRY, entry.name, new)
    return new


def test_tinysam_default_is_release_3_and_release_1_keeps_its_name():
    w = swiftsam.get_entry("tinysam").weights
    assert w.filename == "tinysam_42.3.pth" and w.sha256 is None and w.size_mb
    assert w.urls == ("https://github.com/xinghaochen/TinySAM/releases/download/3.0/tinysam_42.3.pth",)
    old = swiftsam.get_entry("tinysam-1.0")
    assert old.weights.filename == "tinysam.pth"
    assert old.weights.sha256 == "4b8edcf93af46e2a658ae455574de62873778a5cc3fd8e8adf094dcdfa957cf2"
    assert old.weights.urls[0] == "https://github.com/xinghaochen/TinySAM/releases/download/1.0/tinysam.pth"
    assert old.multimask_only and swiftsam.get_entry("tinysam").multimask_only


def test_first_download_pins_sha_and_size_and_the_model_loads(server, swiftsam_home, monkeypatch):
    root, base, _ = server
    state = randomize_(swiftsam.build("tinysam"), seed=5).state_dict()
    torch.save(state, root / "tinysam_42.3.pth")
    entry = _unpublished(monkeypatch, base)
    model = swiftsam.load("tinysam", progress=False)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    pin = json.loads(pin_path(entry.weights).read_text())
    data = (root / "tinysam_42.3.pth").read_bytes()
    assert pin["sha256"] == hashlib.sha256(data).hexdigest() and pin["size"] == len(data)
    assert pin["source"] == f"{base}/tinysam_42.3.pth"
    assert sorted(p.name for p in cached_path(entry.weights).parent.iterdir()) == [
        "tinysam_42.3.pth", "tinysam_42.3.pth.pin.json"]


def test_a_later_download_must_match_the_pin(server, swiftsam_home, monkeypatch):
    root, base, _ = server
    (root / "tinysam_42.3.pth").write_bytes(b"first release" * 100)
    entry = _unpublished(monkeypatch, base)
    target = download(entry, progress=False)
    pinned = pin_path(entry.weights).read_text()
    (root / "tinysam_42.3.pth").write_bytes(b"replaced file" * 100)  # same size, other bytes
    with pytest.raises(DownloadError, match="checksum mismatch.*pinned on its first download") as e:
        download(entry, progress=False, force=True)
    assert str(pin_path(entry.weights)) in str(e.value)
    assert target.read_bytes() == b"first release" * 100 and pin_path(entry.weights).read_text() == pinned
    target.unlink()  # the cached file is gone but the pin stays: a new download is still checked against it
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(entry, progress=False)
    assert not target.exists()


def test_cached_file_of_another_size_than_the_pin_is_refused(server, swiftsam_home, monkeypatch):
    root, base, _ = server
    (root / "tinysam_42.3.pth").write_bytes(b"x" * 1000)
    entry = _unpublished(monkeypatch, base)
    target = download(entry, progress=False)
    target.write_bytes(b"x" * 999)
    with pytest.raises(DownloadError, match="has 999 bytes, but the file pinned on its first download had 1000"):
        download(entry, progress=False)


def test_incomplete_download_is_discarded_and_not_pinned(server, swiftsam_home, monkeypatch):
    root, base, state = server
    (root / "tinysam_42.3.pth").write_bytes(b"y" * 5000)
    state["short_by"] = 100
    entry = _unpublished(monkeypatch, base)
    with pytest.raises(DownloadError, match="incomplete download.*5000 of 5100 bytes"):
        download(entry, progress=False)
    assert not cached_path(entry.weights).exists() and not pin_path(entry.weights).exists()


def test_recorded_size_is_checked(server, swiftsam_home, monkeypatch):
    root, base, _ = server
    (root / "tinysam_42.3.pth").write_bytes(b"z" * 300)
    entry = _unpublished(monkeypatch, base, size_bytes=400)
    with pytest.raises(DownloadError, match="size mismatch.*got 300 bytes, expected 400"):
        download(entry, progress=False)
    assert not cached_path(entry.weights).exists() and not pin_path(entry.weights).exists()
    entry = _unpublished(monkeypatch, base, size_bytes=300)
    assert download(entry, progress=False).read_bytes() == b"z" * 300


def test_file_put_in_the_cache_by_hand_is_pinned_and_offline_error_says_no_hash(swiftsam_home, monkeypatch):
    entry = _unpublished(monkeypatch, "http://127.0.0.1:9")
    with pytest.raises(DownloadError) as e:
        download(entry, progress=False)
    assert "no published sha256" in str(e.value) and str(cached_path(entry.weights)) in str(e.value)
    cached_path(entry.weights).parent.mkdir(parents=True, exist_ok=True)
    cached_path(entry.weights).write_bytes(b"by hand")
    assert download(entry, progress=False) == cached_path(entry.weights)
    pin = json.loads(pin_path(entry.weights).read_text())
    assert pin["sha256"] == hashlib.sha256(b"by hand").hexdigest() and pin["size"] == 7
