"""Official checkpoint formats, the verified download cache, and strict loading."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

import swiftsam
from swiftsam.errors import CheckpointError, DownloadError
from swiftsam.zoo import registry
from swiftsam.zoo.hub import cached_path
from tests.conftest import randomize_
from tests.reference_models import reference_efficientvit, reference_mobilesam, reference_sam_vit


@pytest.fixture(scope="module")
def mobilesam_reference_state():
    """A MobileSAM state dict exactly as the authors' code saves it (classifier head included)."""
    return randomize_(reference_mobilesam(), seed=3).state_dict()


@pytest.fixture
def http_root(tmp_path):
    """Serve a folder on 127.0.0.1 for the duration of a test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _with_weights(monkeypatch, name: str, **changes) -> registry.ModelEntry:
    entry = registry.get_entry(name)
    new = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, **changes))
    monkeypatch.setitem(registry._REGISTRY, name, new)
    return new


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    ours = model.state_dict()
    return all(torch.equal(ours[k], state[k]) for k in ours)


@pytest.mark.parametrize("wrapper", ["plain", "model", "state_dict", "ddp"])
def test_official_formats_load_from_local_file(tmp_path, mobilesam_reference_state, wrapper):
    state = mobilesam_reference_state
    payload = {
        "plain": state,
        "model": {"model": state, "epoch": torch.tensor(3)},
        "state_dict": {"state_dict": state},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrapper]
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    model = swiftsam.load("mobilesam", checkpoint=path)
    assert _same_weights(model, state)


def test_sam_and_efficientvit_formats_load(tmp_path):
    sam_state = randomize_(reference_sam_vit("b", depth=2), 1).state_dict()  # SAM ships a plain state dict
    torch.save(sam_state, tmp_path / "sam.pth")
    assert _same_weights(swiftsam.load("sam-vit-b", tmp_path / "sam.pth", depth=2), sam_state)

    evit_state = randomize_(reference_efficientvit("l0"), 2).state_dict()  # EfficientViT-SAM: {"state_dict": ...}
    torch.save({"state_dict": evit_state}, tmp_path / "evit.pt")
    assert _same_weights(swiftsam.load("efficientvit-sam-l0", tmp_path / "evit.pt"), evit_state)


def test_download_verifies_and_caches(http_root, swiftsam_home, monkeypatch, mobilesam_reference_state):
    root, base = http_root
    torch.save(mobilesam_reference_state, root / "mobile_sam.pt")
    entry = _with_weights(monkeypatch, "mobilesam", urls=(f"{base}/mobile_sam.pt",), sha256=_sha(root / "mobile_sam.pt"))
    model = swiftsam.load("mobilesam", progress=False)
    assert _same_weights(model, mobilesam_reference_state)
    assert cached_path(entry.weights).exists()
    assert list(cached_path(entry.weights).parent.iterdir()) == [cached_path(entry.weights)]
    # second load comes from the cache: the server no longer has the file
    (root / "mobile_sam.pt").unlink()
    assert _same_weights(swiftsam.load("mobilesam", progress=False), mobilesam_reference_state)


def test_mirror_is_tried_first_and_dead_urls_fall_through(http_root, swiftsam_home, monkeypatch, mobilesam_reference_state):
    root, base = http_root
    torch.save(mobilesam_reference_state, root / "mobile_sam.pt")
    _with_weights(monkeypatch, "mobilesam", urls=("http://127.0.0.1:9/nothing-here.pt",), sha256=_sha(root / "mobile_sam.pt"))
    monkeypatch.setenv("SWIFTSAM_MIRROR", base)
    assert _same_weights(swiftsam.load("mobilesam", progress=False), mobilesam_reference_state)


def test_corrupted_download_is_rejected_and_nothing_is_cached(http_root, swiftsam_home, monkeypatch, mobilesam_reference_state):
    root, base = http_root
    torch.save(mobilesam_reference_state, root / "mobile_sam.pt")
    good_sha = _sha(root / "mobile_sam.pt")
    data = bytearray((root / "mobile_sam.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (root / "mobile_sam.pt").write_bytes(bytes(data))
    entry = _with_weights(monkeypatch, "mobilesam", urls=(f"{base}/mobile_sam.pt",), sha256=good_sha)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        swiftsam.load("mobilesam", progress=False)
    cache = cached_path(entry.weights).parent
    assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_error_names_urls_and_cache_path(swiftsam_home, monkeypatch):
    entry = _with_weights(monkeypatch, "mobilesam", urls=("http://127.0.0.1:9/mobile_sam.pt",))
    with pytest.raises(DownloadError) as e:
        swiftsam.load("mobilesam", progress=False)
    msg = str(e.value)
    assert "http://127.0.0.1:9/mobile_sam.pt" in msg and str(cached_path(entry.weights)) in msg
    assert entry.weights.sha256 in msg


def test_real_entries_carry_the_published_urls_and_hashes():
    w = swiftsam.get_entry("mobilesam").weights
    assert w.urls[0] == "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    assert w.urls[1] == "https://huggingface.co/kornia/mobile_sam/resolve/main/mobile_sam.pt"
    assert w.sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
    assert swiftsam.get_entry("sam-vit-h").weights.urls == (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",)
    assert swiftsam.get_entry("efficientvit-sam-xl1").weights.sha256.startswith("10f42277")
    for name in swiftsam.list_models():
        e = swiftsam.get_entry(name)
        # no published hash (pinned on first download, tests/test_pinned_download.py): the size is recorded
        assert e.weights is None or (len(e.weights.sha256) == 64 if e.weights.sha256 else e.weights.size_mb)


def test_checkpoint_of_another_model_lists_keys_and_names_it(tmp_path, mobilesam_reference_state):
    torch.save(mobilesam_reference_state, tmp_path / "mobile_sam.pt")
    with pytest.raises(CheckpointError) as e:
        swiftsam.load("sam-vit-b", checkpoint=tmp_path / "mobile_sam.pt")
    msg = str(e.value)
    assert "missing keys: image_encoder.blocks.0" in msg
    assert "unexpected keys: image_encoder." in msg and "image_encoder.layers.0." in msg
    assert "looks like a mobilesam or tinysam or tinysam-1.0 checkpoint" in msg


def test_partial_checkpoint_is_never_loaded_silently(tmp_path, mobilesam_reference_state):
    state = dict(mobilesam_reference_state)
    state.pop("mask_decoder.iou_token.weight")
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError) as e:
        swiftsam.load("mobilesam", checkpoint=tmp_path / "partial.pt")
    assert "missing keys: mask_decoder.iou_token.weight" in str(e.value)
    assert "wrong shapes: prompt_encoder.no_mask_embed.weight: checkpoint (1, 128) vs model (1, 256)" in str(e.value)


class Opaque:
    """An arbitrary Python object inside a checkpoint (what weights_only=True must refuse)."""


def test_pickled_checkpoint_is_refused_unless_allowed(tmp_path, mobilesam_reference_state):
    torch.save({"model": mobilesam_reference_state, "extra": Opaque()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        swiftsam.load("mobilesam", checkpoint=tmp_path / "pickled.pt")
    model = swiftsam.load("mobilesam", checkpoint=tmp_path / "pickled.pt", allow_pickle=True)
    assert _same_weights(model, mobilesam_reference_state)


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        swiftsam.load("mobilesam", checkpoint=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        swiftsam.load("mobilesam", checkpoint=tmp_path / "junk.pt")


def test_unknown_model_and_model_without_official_weights():
    with pytest.raises(swiftsam.ModelNotFoundError, match="unknown model 'mobilesam2'.*Known models: sam-vit-b"):
        swiftsam.load("mobilesam2")
    with pytest.raises(CheckpointError, match="nanosam-r18 has no official checkpoint"):
        swiftsam.load("nanosam-r18")


@pytest.mark.parametrize("size", [1024, 512, 640])
def test_nanosam_students_give_64x64_at_every_input_size(size):
    model = swiftsam.build("nanosam-r18", input_size=size)
    assert model.spec.input_size == size
    with torch.no_grad():
        assert model.image_encoder(torch.randn(1, 3, size, size)).shape == (1, 256, 64, 64)


def test_nanosam_student_checkpoint_round_trips(tmp_path):
    model = randomize_(swiftsam.build("nanosam-r34", input_size=512), 4)
    torch.save({"model": model.state_dict()}, tmp_path / "student.pt")
    loaded = swiftsam.load("nanosam-r34", checkpoint=tmp_path / "student.pt", input_size=512)
    assert _same_weights(loaded, model.state_dict())
