"""The prompt decoder on static shapes: prompt counts padded to buckets, one CUDA graph per bucket.

A decoder call for one box on a GPU is launch-bound (hundreds of small kernels for ~0.1 ms of work), which a
CUDA graph replays in one launch; a graph has fixed shapes, so B prompts are padded to the next bucket
(1, 2, 4, ... 64; larger batches go in chunks of 64) by repeating the last prompt, whose outputs are dropped.
Prompts are decoded independently of each other, so the padding changes nothing in the real prompts' outputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 64)

# run(inputs, mask_prompts) -> outputs: the decoder on inputs in the ABI's order (embedding, point_coords,
# point_labels, mask_input, has_mask_input, *high_res), told whether any prompt has a mask input
Runner = Callable[[tuple[torch.Tensor, ...], bool], tuple[torch.Tensor, ...]]


def bucket_for(n: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket that holds ``n`` prompts (``n`` <= the largest bucket)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} prompts exceed the largest bucket ({buckets[-1]}): decode them in chunks.")


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with its last row repeated up to ``rows`` rows (a real prompt: no NaN from an empty one)."""
    extra = rows - t.shape[0]
    return t if extra == 0 else torch.cat([t, t[-1:].expand(extra, *t.shape[1:])])


class StaticShapeDecoder:
    """Calls ``run`` only on bucketed prompt counts: pads each chunk of at most ``buckets[-1]`` prompts to its
    bucket, and cuts the outputs back. Features given one per prompt are padded alike; one shared image's are
    passed as they are."""

    def __init__(self, run: Runner, buckets: Sequence[int] = BUCKETS) -> None:
        self.run = run
        self.buckets = tuple(buckets)

    def __call__(self, embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                 mask_input: torch.Tensor, has_mask_input: torch.Tensor, *high_res: torch.Tensor
                 ) -> tuple[torch.Tensor, ...]:
        n = point_coords.shape[0]
        per_prompt = embedding.shape[0] != 1
        mask_prompts = bool(has_mask_input.any())  # one read for the whole batch, as the eager decoder's
        step = self.buckets[-1]
        parts = []
        for start in range(0, n, step):
            stop = min(n, start + step)
            rows = bucket_for(stop - start, self.buckets)

            def cut(t: torch.Tensor) -> torch.Tensor:
                return pad_rows(t[start:stop], rows)

            images = [cut(t) if per_prompt else t for t in (embedding, *high_res)]
            inputs = (images[0], *(cut(t) for t in (point_coords, point_labels, mask_input, has_mask_input)),
                      *images[1:])
            parts.append(tuple(o[:stop - start] for o in self.run(inputs, mask_prompts)))
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(outs) for outs in zip(*parts))


class CudaGraphDecoder:
    """A ``Runner`` that captures ``decoder`` (a ``PromptDecoder``) once per input shape on a CUDA device and
    replays it: inputs are copied into the graph's static tensors, outputs cloned out of its own. All graphs
    share one memory pool; replays are serialised (a lock: a server's threads share the engine), which with
    the cloned outputs makes sharing it safe."""

    def __init__(self, decoder: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        self.decoder = decoder
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}
        self._pool = None
        self._lock = threading.Lock()

    def __call__(self, inputs: tuple[torch.Tensor, ...], mask_prompts: bool) -> tuple[torch.Tensor, ...]:
        key = (mask_prompts, *((tuple(t.shape), t.dtype) for t in inputs))
        with self._lock:
            entry = self.graphs.get(key)
            if entry is None:
                entry = self.graphs[key] = self._capture(inputs, mask_prompts)
            graph, static_in, static_out = entry
            for dst, src in zip(static_in, inputs):
                dst.copy_(src)
            graph.replay()
            return tuple(t.clone() for t in static_out)

    def _capture(self, inputs: tuple[torch.Tensor, ...], mask_prompts: bool):
        static_in = tuple(t.clone() for t in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (lazy caches, cuBLAS workspaces), as capture requires
                self.decoder(*static_in, mask_prompts=mask_prompts)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = tuple(self.decoder(*static_in, mask_prompts=mask_prompts))
        return graph, static_in, static_out
