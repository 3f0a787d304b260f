"""Downloading official checkpoints into a verified cache.

Cache: ``$SWIFTSAM_HOME/checkpoints`` (default ``~/.cache/swiftsam/checkpoints``). A file appears
there only after its sha256 matched; partial and corrupted downloads are removed.
``$SWIFTSAM_MIRROR`` (a base URL) is tried before the official URLs, for local or corporate mirrors.

Checkpoints whose authors publish no sha256 (``Weights.sha256 is None``) are pinned on first download: the
file must arrive whole (its announced length, and ``Weights.size_bytes`` where recorded), and its sha256 and
size are written beside it (``FILE.pin.json``). Every later download of it must match the pin, and a cached
file whose size differs from the pin is refused.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DownloadError
from ..utils import atomic_path, probe_dir, read_chunks, sha256_hex, sha256_of
from .registry import ModelEntry, Weights


def swiftsam_home() -> Path:
    """``$SWIFTSAM_HOME``, default ``~/.cache/swiftsam``: checkpoints, exported graphs, built engines."""
    return Path(os.environ.get("SWIFTSAM_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "swiftsam"))


def writable_home_dir(folder: Path, error: type[Exception], alternative: str = "") -> Path:
    """Create ``folder`` (under ``$SWIFTSAM_HOME``) and check that files can be written in it: an unwritable
    ``SWIFTSAM_HOME`` is reported as ``error`` saying what to do (``alternative``: another way round it)."""
    try:
        probe_dir(folder)
    except OSError as e:
        raise error(
            f"cannot write to {folder} ({e.strerror or e}): the swiftsam cache (SWIFTSAM_HOME={swiftsam_home()}) "
            f"must be a writable folder. Set SWIFTSAM_HOME to one (export SWIFTSAM_HOME=/path/to/writable/folder)"
            + (f", {alternative}." if alternative else ".")
        ) from None
    return folder


def cache_dir() -> Path:
    return swiftsam_home() / "checkpoints"


def cached_path(weights: Weights) -> Path:
    return cache_dir() / weights.filename


def candidate_urls(weights: Weights) -> list[str]:
    mirror = os.environ.get("SWIFTSAM_MIRROR")
    urls = [mirror.rstrip("/") + "/" + weights.filename] if mirror else []
    return urls + list(weights.urls)


def pin_path(weights: Weights) -> Path:
    """Where the sha256 and size of a checkpoint without a published hash are pinned on first download."""
    return cache_dir() / f"{weights.filename}.pin.json"


def read_pin(weights: Weights) -> dict | None:
    """The pin of ``weights`` (``{"sha256", "size", "source"}``), or None before its first download."""
    path = pin_path(weights)
    if not path.exists():
        return None
    try:
        pin = json.loads(path.read_text())
        if not (isinstance(pin, dict) and isinstance(pin.get("sha256"), str) and len(pin["sha256"]) == 64
                and isinstance(pin.get("size"), int)):
            raise ValueError("not a pin")
    except (OSError, ValueError) as e:
        raise DownloadError(f"{path} (the sha256 pinned on the first download of {weights.filename}) cannot be "
                            f"read ({e}): delete it and {cached_path(weights)}, then download again.") from None
    return pin


def _write_pin(weights: Weights, sha256: str, size: int, source: str) -> dict:
    pin = {"file": weights.filename, "sha256": sha256, "size": size, "source": source}
    with atomic_path(pin_path(weights)) as tmp:
        tmp.write_text(json.dumps(pin, indent=2) + "\n")
    return pin


def _check_cached_against_pin(weights: Weights, target: Path) -> None:
    """A cached checkpoint without a published hash: its size must equal the pin's (and ``size_bytes``).
    A file put in the cache by hand (no pin yet) is pinned as it is."""
    size = target.stat().st_size
    if weights.size_bytes is not None and size != weights.size_bytes:
        raise DownloadError(f"the cached {target} has {size} bytes, but {weights.filename} has {weights.size_bytes}: "
                            f"it is incomplete or another file. Delete it and download again.")
    pin = read_pin(weights)
    if pin is None:
        try:
            _write_pin(weights, sha256_of(target), size, "a file found in the cache")
        except OSError:  # a read-only cache: the file is used as it is, and pinned once the cache can be written
            pass
    elif size != pin["size"]:
        raise DownloadError(f"the cached {target} has {size} bytes, but the file pinned on its first download had "
                            f"{pin['size']} (sha256 {pin['sha256']}): it was changed or damaged. Delete it and "
                            f"download again (swiftsam download MODEL --force).")


def _fetch(url: str, dest: Path, progress: bool, timeout: float) -> tuple[str, int]:
    """Stream ``url`` into ``dest``; return the sha256 (hashed as it is written) and the size of what was
    written, after checking that the whole announced length arrived."""
    req = urllib.request.Request(url, headers={"User-Agent": "swiftsam"})
    size = 0
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".part")[0].lstrip("."),
                  disable=not progress) as bar:
            def written() -> Iterator[bytes]:
                nonlocal size
                for chunk in read_chunks(resp):
                    out.write(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                    yield chunk

            digest = sha256_hex(written())
    if total is not None and size != total:
        raise DownloadError(f"incomplete download from {url}: {size} of {total} bytes arrived. The file was "
                            f"discarded; try again.")
    return digest, size


def download(entry: ModelEntry, progress: bool = True, timeout: float = 30.0, force: bool = False) -> Path:
    """Return the cached checkpoint of ``entry``, downloading and verifying it first if needed."""
    w = entry.weights
    if w is None and entry.bundled is not None:
        raise DownloadError(f"{entry.name} ships with swiftsam (swiftsam/weights/): there is nothing to download.")
    if w is None:
        raise DownloadError(
            f"{entry.name} has no official PyTorch checkpoint to download. Train one "
            f"(see the README) and pass it with checkpoint=PATH / --checkpoint PATH."
        )
    target = cached_path(w)
    if target.exists() and not force:
        if w.sha256 is None:
            _check_cached_against_pin(w, target)
        return target
    writable_home_dir(target.parent, DownloadError, f"or download {w.filename} yourself and pass --checkpoint PATH")
    pin = read_pin(w) if w.sha256 is None else None
    expected = w.sha256 or (pin["sha256"] if pin else None)
    failures = []
    for url in candidate_urls(w):
        try:
            with atomic_path(target) as tmp:
                digest, size = _fetch(url, tmp, progress, timeout)
                if w.size_bytes is not None and size != w.size_bytes:
                    raise DownloadError(f"size mismatch for {url}: got {size} bytes, expected {w.size_bytes}. "
                                        f"The file was discarded; nothing was written to {target}.")
                if expected is not None and digest != expected:
                    how = ("" if w.sha256 else f" (pinned on its first download, in {pin_path(w)}: if the authors "
                           f"replaced the file on purpose, delete that pin to accept the new one)")
                    raise DownloadError(
                        f"checksum mismatch for {url}: got sha256 {digest}, expected {expected}{how}. "
                        f"The file was discarded; nothing was written to {target}."
                    )
            if expected is None:  # the first download of a file without a published hash: pin it
                _write_pin(w, digest, size, url)
            return target
        except DownloadError as e:
            failures.append(str(e))
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', e)}")
    tried = "\n  ".join(failures)
    check = (f"sha256 {expected}" if expected else "no published sha256: its hash is pinned on first download"
             ) + (f", {w.size_bytes} bytes" if w.size_bytes is not None else "")
    raise DownloadError(
        f"could not download the {entry.name} checkpoint.\n  {tried}\n"
        f"If this machine is offline, fetch {w.filename} ({check}) from\n  "
        + "\n  ".join(w.urls)
        + f"\nelsewhere and put it at {target} (or pass checkpoint=PATH / --checkpoint PATH)."
    )
