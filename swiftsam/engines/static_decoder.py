"""The prompt decoder on static shapes: prompt counts padded to buckets, one CUDA graph per bucket.

A decoder call for one box on a GPU is launch-bound (hundreds of small kernels for ~0.1 ms of work), which a
CUDA graph replays in one launch; a graph has fixed shapes, so B prompts are padded to the next bucket
(1, 2, 4, ... 64; larger batches go in chunks of 64) by repeating the last prompt, whose outputs are dropped.
Prompts are decoded independently of each other, so the real prompts' outputs are those of an unpadded call
(within float rounding: another batch size may pick other kernels).
"""

from __future__ import annotations

import copy
import threading
import warnings
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


def cached_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor a module tree keeps in its private caches (attributes ``_*`` holding tensors, or tuples, lists
    and dicts of them): a CUDA graph captured over the module reads them by address, so whoever holds the graph
    must hold these too (a cache may be replaced or cleared later, which would free the memory it replays)."""
    found: list[torch.Tensor] = []

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for m in module.modules():
        for name, value in vars(m).items():
            if name.startswith("_") and name not in ("_parameters", "_buffers", "_modules"):
                walk(value)
    return found


MAX_GRAPHS = 32  # shapes captured per engine; more (an unusual number of clicks each time) decode eagerly


class CudaGraphDecoder:
    """A ``Runner`` that captures a private copy of ``decoder`` (a ``PromptDecoder``) once per input shape on a
    CUDA device and replays it: inputs are copied into the graph's static tensors, outputs cloned out of its own.

    The copy is a snapshot (build a new engine after changing the weights): a graph reads the decoder's caches
    (stacked hypernetwork weights, the dense position encoding) by address, so nothing but the graphs may ever
    replace them. At most ``max_graphs`` shapes are captured; other shapes, and any whose capture failed (a
    warning says why), run the copy eagerly. All its work runs on one private stream that waits for the caller's
    and that the caller's waits for, under a lock (a server's threads share the engine): the graphs share one
    memory pool, safe with replays in turn and cloned outputs."""

    def __init__(self, decoder: torch.nn.Module, max_graphs: int = MAX_GRAPHS) -> None:
        self.decoder = copy.deepcopy(decoder)
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple] = {}  # key -> (graph, static inputs, static outputs, caches it reads)
        self.failed: dict[tuple, str] = {}
        self._pool = None
        self._stream: torch.cuda.Stream | None = None
        self._lock = threading.Lock()

    def __call__(self, inputs: tuple[torch.Tensor, ...], mask_prompts: bool) -> tuple[torch.Tensor, ...]:
        key = (mask_prompts, *((tuple(t.shape), t.dtype) for t in inputs))
        with self._lock, torch.cuda.device(inputs[0].device):
            caller = torch.cuda.current_stream()
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            self._stream.wait_stream(caller)  # the inputs are ready
            with torch.cuda.stream(self._stream):
                entry = self.graphs.get(key)
                if entry is None and key not in self.failed and len(self.graphs) < self.max_graphs:
                    entry = self._capture(key, inputs, mask_prompts)
                if entry is None:
                    out = tuple(self.decoder(*inputs, mask_prompts=mask_prompts))
                else:
                    graph, static_in, static_out, _ = entry
                    for dst, src in zip(static_in, inputs):
                        dst.copy_(src)
                    graph.replay()
                    out = tuple(t.clone() for t in static_out)
            caller.wait_stream(self._stream)
            for t in out:  # made on the private stream, used on the caller's
                t.record_stream(caller)
            return out

    def _capture(self, key: tuple, inputs: tuple[torch.Tensor, ...], mask_prompts: bool):
        try:
            static_in = tuple(t.clone() for t in inputs)
            for _ in range(2):  # warm-up off the default stream (lazy caches, cuBLAS workspaces), as capture requires
                self.decoder(*static_in, mask_prompts=mask_prompts)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
                static_out = tuple(self.decoder(*static_in, mask_prompts=mask_prompts))
        except RuntimeError as e:
            self.failed[key] = f"{type(e).__name__}: {e}"
            warnings.warn(f"capturing the decoder as a CUDA graph failed for inputs {key[1:]} ({e}); "
                          f"those decode eagerly.", RuntimeWarning, stacklevel=3)
            return None
        # its copy's caches are replaced by nothing else, but the graph holds them anyway (see ``cached_tensors``)
        self.graphs[key] = (graph, static_in, static_out, cached_tensors(self.decoder))
        return self.graphs[key]
