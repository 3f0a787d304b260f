"""Data parallelism under ``torchrun``: the same command on one CPU, one GPU or many processes.

Gradients are averaged across processes with one flattened all-reduce per optimiser step (what
DistributedDataParallel computes, without its overlap of communication and backward), and buffers
(batch-norm statistics) follow rank 0's, so every rank holds the same weights after every step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..runtime import Dist, init_torchrun

__all__ = ["Dist", "average_gradients", "barrier", "broadcast_module", "init", "max_divergence", "mean_scalar",
           "shutdown", "sync_buffers"]


def init(device_kind: str) -> Dist:
    """Join the ``torchrun`` process group: nccl on CUDA, gloo on CPU."""
    return init_torchrun("nccl" if device_kind == "cuda" else "gloo")


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, d: Dist) -> None:
    """Every rank takes rank 0's parameters and buffers."""
    if not d.active:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def sync_buffers(module: nn.Module, d: Dist) -> None:
    if not d.active:
        return
    with torch.no_grad():
        for b in module.buffers():
            if b.dtype.is_floating_point or b.dtype in (torch.int64, torch.int32):
                dist.broadcast(b.data, src=0)


def average_gradients(params: list[nn.Parameter], d: Dist) -> None:
    if not d.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def max_divergence(params: list[torch.Tensor], d: Dist) -> float:
    """Largest absolute difference between this rank's weights and rank 0's (0.0 when in sync)."""
    if not d.active:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in params])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = torch.tensor([float((flat - ref).abs().max())])
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def mean_scalar(value: float, d: Dist) -> float:
    if not d.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / d.world
