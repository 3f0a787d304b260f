"""Torch runtime settings shared by engines, benchmarks, training and evaluation: the device a name stands
for (``resolve_device``: ``auto`` is CUDA when present, else the CPU), reduced-precision autocast, and joining
the process group ``torchrun`` describes in the environment."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

import torch

# overrides what device "auto" stands for (e.g. SWIFTSAM_DEVICE=cpu on a GPU machine); any name resolve_device takes
DEVICE_ENV = "SWIFTSAM_DEVICE"
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep large freed blocks for reuse (once per process; Linux with glibc only).

    By default glibc serves every block over 32 MiB with a fresh ``mmap`` and unmaps it when freed, so each
    large tensor of a CPU forward pass (the decoder's per-prompt image tokens: 64 prompts x 4096 x 256 floats =
    256 MiB) costs its size in page faults, every call: at 64 boxes that was half the decoder's time. Raising the
    mmap and trim thresholds to 1 GiB keeps those pages in the heap (RSS stays at its peak instead of returning
    to the OS between calls). ``SWIFTSAM_MALLOC_TUNING=0`` leaves the allocator alone. Returns whether the
    thresholds are set."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("SWIFTSAM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc, not musl)
    except (OSError, AttributeError):
        return False
    for threshold in (1 << 30, 32 << 20):  # older glibc cap the mmap threshold at 32 MiB
        if libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            _allocator_tuned = libc.mallopt(_M_TRIM_THRESHOLD, threshold) == 1
            break
    return _allocator_tuned


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``spec`` names: ``auto`` (or None) is CUDA when this torch sees a GPU, else the CPU
    (``$SWIFTSAM_DEVICE`` can say otherwise); ``cpu``, ``cuda`` (the current GPU), ``cuda:N``, or a
    torch.device. Raises InputError, saying what to use instead, for a name that is not a device, CUDA on a
    machine without it, or a GPU index this machine does not have."""
    from .errors import InputError

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        env = os.environ.get(DEVICE_ENV, "").strip()
        if env and env.lower() != "auto":
            try:
                return resolve_device(env)
            except InputError as e:
                raise InputError(f"{DEVICE_ENV}={env}: {e}") from None
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = spec if isinstance(spec, torch.device) else torch.device(spec.strip().lower())
    except (RuntimeError, TypeError, ValueError, AttributeError):
        raise InputError(f"device {spec!r} is not a device; use {DEVICE_CHOICES}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"device {spec}: this torch ({torch.__version__}, {build}) sees no CUDA device; use "
                             f"device cpu (or auto: CUDA when present, else the CPU).")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"device {spec}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); use one of them, or cuda.")
    return device


# precision name -> the dtype autocast runs in ("fp32" and "none" run without autocast)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NO_AUTOCAST = ("fp32", "none")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """A context that runs ``device``'s ops in ``precision`` (fp16 | bf16), or a no-op for fp32 / none."""
    if precision in NO_AUTOCAST:
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(sorted(PRECISIONS))} or none, got {precision!r}.")
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=PRECISIONS[precision])


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_torchrun(backend: str = "gloo") -> Dist:
    """Join the process group ``torchrun`` describes in the environment (WORLD_SIZE, LOCAL_RANK, ...);
    a single process (no WORLD_SIZE, or 1) joins nothing and gets ``Dist()``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
