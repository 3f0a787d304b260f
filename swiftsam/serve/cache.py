"""Image embeddings kept by image hash: an LRU bounded by bytes, shared by the server's requests."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedImage:
    """An encoded image: its feature levels (each 1 x C x H x W, the contract's ``features`` in order; the first
    is the embedding the decoder attends to) and its size (H, W)."""

    levels: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]

    @property
    def embedding(self) -> torch.Tensor:
        return self.levels[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


class EmbeddingCache:
    """Least recently used entries are dropped once the entries hold more than ``max_bytes`` (0: keep nothing).
    Thread-safe: the model thread puts, request handlers get."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> CachedImage | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def peek(self, key: str) -> CachedImage | None:
        """The entry without counting a hit or a miss, nor refreshing it."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, entry: CachedImage) -> None:
        size = entry.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:  # larger than the whole cache: not kept
                return
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
                self.evictions += 1

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
