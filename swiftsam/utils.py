"""Small helpers: atomic file writes, file sha256, removal of the temporaries a killed run leaves, lock files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import SwiftSamError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_torch_atomic(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically and reproducibly: the same object gives the same bytes.

    ``torch.save`` to a file name records that name inside the archive, so saving to atomic_path's
    random temporary made every save (and its sha256) different. Saving through an open file records
    the fixed name ``archive`` instead.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


# ------------------------------------------------------------------ sha256
CHUNK = 1 << 20  # bytes read at a time when hashing or copying a file


def read_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """The bytes of an open binary ``stream`` (a file, an HTTP response), ``size`` at a time, to its end."""
    return iter(lambda: stream.read(size), b"")


def sha256_hex(chunks: Iterable[bytes]) -> str:
    """The hex sha256 of the concatenated ``chunks`` (e.g. a download, hashed as it is written)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks: how checkpoints and weights are checked."""
    with open(path, "rb") as f:
        return sha256_hex(read_chunks(f))


# ------------------------------------------------------------------ output checks
_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    getattr(errno, "EDQUOT", -1): "the disk quota is used up: free some space or write somewhere else",
    errno.EACCES: "the folder is not writable: choose a folder you can write to",
    errno.EPERM: "the folder is not writable: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def write_error(path: str | os.PathLike[str], error: OSError, what: str = "output") -> SwiftSamError:
    """A clear error for a failed write of ``path`` (``what``: the option or file it is, e.g. ``--out``)."""
    reason = error.strerror or str(error)
    hint = _WRITE_HINTS.get(error.errno, "check the path and try again")
    return SwiftSamError(f"cannot write {what} {path} ({reason}): {hint}.")


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], what: str = "output") -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` (full disk, read-only folder...) into a clear error."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e, what) from None


def _first_existing(folder: Path) -> Path:
    while True:
        try:
            if folder.exists() or folder == folder.parent:
                return folder
        except OSError:  # e.g. a folder we may not look into
            return folder
        folder = folder.parent


def probe_dir(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` if needed and check that a file can be created in it (raises OSError if not)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".swiftsam-probe.", dir=folder)
    os.close(fd)
    os.unlink(name)


def _probe(folder: Path, target: Path, what: str) -> None:
    """Check that ``folder`` (existing) is a folder in which a file can be created."""
    if not folder.is_dir():
        raise SwiftSamError(f"cannot write {what} {target}: {folder} is a file, not a folder; choose another path.")
    try:
        probe_dir(folder)
    except OSError as e:
        raise write_error(target, e, what) from None


def check_output_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Before any work: ``path`` can be written as a file (not a folder; its folder, or the first part of
    it that exists, is a writable folder). Creates nothing."""
    target = Path(path)
    if target.is_dir():
        example = target / ("overlay.png" if "overlay" in what else "masks.png")
        raise SwiftSamError(f"{what} {target} is a folder: give the file to write, e.g. {example}.")
    _probe(_first_existing(target.parent), target, what)
    return target


def check_output_dir(path: str | os.PathLike[str], what: str = "--out-dir") -> Path:
    """Before any work: ``path`` is (or can be created as) a writable folder. Creates nothing."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SwiftSamError(f"{what} {target} is a file, not a folder: give a folder (it is created if needed).")
    _probe(_first_existing(target), target, what)
    return target


# ------------------------------------------------------------------ stale temporaries
# atomic_path's temporary: ".<target name>.<8 random chars of tempfile>.part"
_PART = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.part$")


def remove_stale_parts(folder: str | os.PathLike[str], targets: Iterable[str] | None = None,
                       older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporaries ``atomic_path`` leaves in ``folder`` when a process is killed mid-write.

    Only files named as ours (``.<name>.<random>.part``) are touched: those of ``targets`` (file names),
    or of any target when ``targets`` is None, last modified more than ``older_than_s`` seconds ago (a
    live writer replaces its temporary within moments; with a lock on the target, 0 is safe).
    Returns what was removed.
    """
    folder = Path(folder)
    wanted = None if targets is None else set(targets)
    removed = []
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _PART.match(p.name)
        if not m or (wanted is not None and m["target"] not in wanted):
            continue
        try:
            if not p.is_file() or now - p.stat().st_mtime < older_than_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:  # gone already (another process cleaned it) or not ours to remove
            continue
    return removed


# ------------------------------------------------------------------ owners and locks
def host_tag() -> str:
    """This machine's name, reduced to [A-Za-z0-9_] (it goes into file names)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when it cannot be told, e.g. on Windows)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


try:
    import fcntl
except ImportError:  # Windows: an exclusive-create lock file without automatic release
    fcntl = None


class FileLock:
    """A non-blocking exclusive lock on a lock file that names its holder (pid, host).

    With ``fcntl`` (Linux, macOS) the kernel holds the lock: it is released when the holder exits,
    however it dies, so a lock file left by a killed run is taken over at once. Elsewhere the file is
    created exclusively and a leftover must be removed by hand (the message says so).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; False when another process (or another FileLock) holds it."""
        if self._fd is not None:
            return True
        while True:
            try:
                flags = os.O_RDWR | os.O_CREAT | (0 if fcntl is not None else os.O_EXCL)
                fd = os.open(self.path, flags, 0o644)
            except FileExistsError:
                return False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    return False
                try:  # the previous holder may have removed the file between our open and our lock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
            self._fd = fd
            return True

    def release(self) -> None:
        """Remove the lock file and let go of the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str:
        """Who holds the lock, for messages ("pid 123 on host")."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def __del__(self) -> None:  # a lock forgotten on an error path is let go with its object
        try:
            self.release()
        except Exception:
            pass

    def __enter__(self) -> FileLock:
        if not self.acquire():
            how = "" if fcntl is not None else f" (if no run is active, remove {self.path})"
            raise SwiftSamError(f"{self.path} is locked by {self.holder()}{how}.")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
