"""Downloading official checkpoints into a verified cache.

Cache: ``$SWIFTSAM_HOME/checkpoints`` (default ``~/.cache/swiftsam/checkpoints``). A file appears
there only after its sha256 matched; partial and corrupted downloads are removed.
``$SWIFTSAM_MIRROR`` (a base URL) is tried before the official URLs, for local or corporate mirrors.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DownloadError
from ..utils import atomic_path, probe_dir, read_chunks, sha256_hex
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


def _fetch(url: str, dest: Path, progress: bool, timeout: float) -> str:
    """Stream ``url`` into ``dest``; return the sha256 of what was written (hashed as it is written)."""
    req = urllib.request.Request(url, headers={"User-Agent": "swiftsam"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".part")[0].lstrip("."),
                  disable=not progress) as bar:
            def written() -> Iterator[bytes]:
                for chunk in read_chunks(resp):
                    out.write(chunk)
                    bar.update(len(chunk))
                    yield chunk

            return sha256_hex(written())


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
        return target
    writable_home_dir(target.parent, DownloadError, f"or download {w.filename} yourself and pass --checkpoint PATH")
    failures = []
    for url in candidate_urls(w):
        try:
            with atomic_path(target) as tmp:
                digest = _fetch(url, tmp, progress, timeout)
                if digest != w.sha256:
                    raise DownloadError(
                        f"checksum mismatch for {url}: got sha256 {digest}, expected {w.sha256}. "
                        f"The file was discarded; nothing was written to {target}."
                    )
            return target
        except DownloadError as e:
            failures.append(str(e))
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', e)}")
    tried = "\n  ".join(failures)
    raise DownloadError(
        f"could not download the {entry.name} checkpoint.\n  {tried}\n"
        f"If this machine is offline, fetch {w.filename} (sha256 {w.sha256}) from\n  "
        + "\n  ".join(w.urls)
        + f"\nelsewhere and put it at {target} (or pass checkpoint=PATH / --checkpoint PATH)."
    )
