"""Timing one workload: warm-up, device synchronisation, order statistics and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``iterations`` timed calls (after the warm-up), and the peak memory."""

    median_s: float
    p90_s: float
    min_s: float
    mean_s: float
    iterations: int
    peak_memory_mb: float | None
    memory_kind: str  # "cpu_rss" (process peak resident set) or "cuda_allocated" (torch max allocated)

    def as_dict(self) -> dict:
        return asdict(self)


class PeakMemory:
    """Peak memory while a workload runs.

    On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. On CPU: the process's peak
    resident set size; on Linux the peak is reset first (``/proc/self/clear_refs``), so it belongs to
    this workload plus what the process already held (model weights included). Elsewhere it is the
    peak since the process started.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 2, iterations: int = 10,
            min_time_s: float = 0.0) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then time at least ``iterations`` calls (and keep going
    until ``min_time_s`` seconds of timed calls), synchronising the device around each call."""
    if iterations < 1 or warmup < 0:
        raise ValueError(f"need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    memory = PeakMemory(device)
    memory.reset()
    times: list[float] = []
    while len(times) < iterations or sum(times) < min_time_s:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    return Timing(
        median_s=float(np.median(t)), p90_s=float(np.percentile(t, 90)), min_s=float(t.min()),
        mean_s=float(t.mean()), iterations=len(times), peak_memory_mb=memory.peak_mb(), memory_kind=memory.kind,
    )
