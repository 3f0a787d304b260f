"""Torch runtime settings shared by engines, benchmarks, training and evaluation: reduced-precision
autocast, and joining the process group ``torchrun`` describes in the environment."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

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
