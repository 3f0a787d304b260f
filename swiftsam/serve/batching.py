"""Dynamic batching: the requests that arrive within ``batch_wait_ms`` of each other share one image encoder call
(their new images, each encoded once however many requests send it) and one prompt decoder call (all their
prompts of one shape), on one model thread.

A request handler checks and decodes its input, then ``Batcher.submit``s a job: the image's pixels (or its cached
embedding) and its ``PromptBatch`` (None: only the embedding). The worker collects up to ``max_batch`` jobs, waits
at most ``batch_wait_ms`` after the first, and runs them on the model thread:

1. encode: the images not in the cache, ``preprocess_image`` each, concatenated -> ``engine.encode`` (chunks of
   ``max_batch``) -> one ``CachedImage`` per image, put in the cache;
2. decode: the jobs' prompts grouped by their number of points (SAM's flat format; padding them to one length
   would change the decoder's attention, so shapes are never mixed), concatenated up to ``decode_chunk`` prompts,
   each with its image's embedding -> ``Predictor.decode`` (the engine's decoder) -> low-res logits + IoU per job.

Upsampling to the image size and RLE encoding happen back in the request's own thread. Work that cannot be
batched (segment everything, exporting the decoder) runs alone on the same thread (``Batcher.call``), so the
model is only ever used by one thread. A full queue refuses the job (``QueueFullError``: the server answers 503).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..modeling.features import ImageFeatures
from ..predictor import Predictor
from ..prompts import PromptBatch
from ..transforms import preprocess_image
from .cache import CachedImage, EmbeddingCache
from .limits import ServeConfig
from .metrics import Metrics


class QueueFullError(Exception):
    """The model's queue holds ``max_queue`` requests already."""


@dataclass(eq=False)
class Job:
    key: str = ""  # the image's hash
    image: np.ndarray | None = None  # H x W x 3 uint8, to encode when not cached
    cached: CachedImage | None = None  # the image's embedding, when the handler found it in the cache
    prompts: PromptBatch | None = None  # None: the embedding only
    fn: Callable[[], Any] | None = None  # exclusive work, run alone on the model thread
    future: asyncio.Future | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Decoded:
    image: CachedImage
    low_res: torch.Tensor | None  # B x 4 x h x w logits of the job's prompts (None for an embedding job)
    iou: torch.Tensor | None  # B x 4


class Batcher:
    """Runs jobs on one model thread, batching concurrent ones. ``start`` / ``stop`` in the server's event loop."""

    def __init__(self, predictor: Predictor, cache: EmbeddingCache, metrics: Metrics, config: ServeConfig) -> None:
        self.predictor = predictor
        self.cache = cache
        self.metrics = metrics
        self.config = config
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.model_thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.config.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="swiftsam-model")
        self._task = asyncio.create_task(self._worker(), name="swiftsam-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:  # whoever still waits learns the server is going away
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(QueueFullError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # ------------------------------------------------------------ submitting
    async def submit(self, key: str, image: np.ndarray | None = None, cached: CachedImage | None = None,
                     prompts: PromptBatch | None = None) -> Decoded:
        """The image's embedding (encoded with the batch, or ``cached``) and, with ``prompts``, their decoder
        outputs. Raises QueueFullError, or asyncio.TimeoutError after ``request_timeout_s``."""
        if image is None and cached is None:
            raise ValueError("submit needs the image or its cached embedding")
        return await self._enqueue(Job(key=key, image=image, cached=cached, prompts=prompts))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` alone on the model thread, in queue order (with the same limits as a batch job)."""
        return await self._enqueue(Job(fn=fn))

    async def _enqueue(self, job: Job) -> Any:
        if self._queue is None:
            raise RuntimeError("the batcher is not started (start() in the server's event loop)")
        job.future = self._loop.create_future()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.config.max_queue} requests are waiting for the model") from None
        return await asyncio.wait_for(job.future, self.config.request_timeout_s)  # cancels the job on timeout

    # ------------------------------------------------------------ the worker
    async def _get(self, timeout: float) -> Job | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if timeout <= 0:
            return None
        task = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if task in done:
            return task.result()
        task.cancel()
        try:
            return await task  # it may have taken a job just before the cancel
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the worker itself is being stopped
                raise
            return None

    async def _worker(self) -> None:
        loop = self._loop
        wait_s = self.config.batch_wait_ms / 1000.0
        while True:
            job = await self._queue.get()
            exclusive = None
            batch = []
            if job.fn is not None:
                exclusive = job
            else:
                batch.append(job)
                deadline = loop.time() + wait_s
                while len(batch) < self.config.max_batch:
                    nxt = await self._get(deadline - loop.time())
                    if nxt is None:
                        break
                    if nxt.fn is not None:  # runs right after this batch
                        exclusive = nxt
                        break
                    batch.append(nxt)
            if batch:
                await loop.run_in_executor(self._executor, self._run_batch, batch)
            if exclusive is not None:
                await loop.run_in_executor(self._executor, self._run_call, exclusive)

    def _resolve(self, job: Job, value: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # timed out and cancelled meanwhile
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(value)

        self._loop.call_soon_threadsafe(settle)

    def _run_call(self, job: Job) -> None:
        if job.future.done():
            return
        self.model_thread = threading.current_thread()
        try:
            self._resolve(job, job.fn())
        except Exception as e:  # the handler turns it into the response
            self._resolve(job, error=e)

    def _run_batch(self, batch: list[Job]) -> None:
        self.model_thread = threading.current_thread()
        live = [j for j in batch if not j.future.done()]
        if not live:
            return
        self.metrics.inc("swiftsam_batches_total")
        try:
            with torch.inference_mode():
                images = self._encode(live)
                outputs = self._decode(live, images)
        except Exception as e:
            for j in live:
                self._resolve(j, error=e)
            return
        for j in live:
            low, iou = outputs.get(id(j), (None, None))
            self._resolve(j, Decoded(images[j.key], low, iou))

    def _encode(self, jobs: list[Job]) -> dict[str, CachedImage]:
        images: dict[str, CachedImage] = {}
        todo: dict[str, np.ndarray] = {}
        for j in jobs:
            if j.key in images or j.key in todo:
                continue
            found = j.cached or self.cache.peek(j.key)  # another job of an earlier batch may have encoded it
            if found is not None:
                images[j.key] = found
            else:
                todo[j.key] = j.image
        keys = list(todo)
        spec = self.predictor.model.spec
        engine = self.predictor.engine
        for start in range(0, len(keys), self.config.max_batch):
            chunk = keys[start: start + self.config.max_batch]
            x = torch.cat([preprocess_image(todo[k], spec, engine.device)[0] for k in chunk])
            levels = ImageFeatures.of(engine.encode(x)).levels  # the contract's levels, the embedding first
            self.metrics.inc("swiftsam_encoder_calls_total")
            self.metrics.inc("swiftsam_encoder_images_total", len(chunk))
            for i, k in enumerate(chunk):
                entry = CachedImage(tuple(t[i: i + 1].clone() for t in levels), tuple(todo[k].shape[:2]))
                images[k] = entry
                self.cache.put(k, entry)
        return images

    def _decode(self, jobs: list[Job], images: dict[str, CachedImage]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        groups: dict[int, list[Job]] = defaultdict(list)
        for j in jobs:
            if j.prompts is not None:
                groups[j.prompts.point_coords.shape[1]].append(j)
        outputs = {}
        for group in groups.values():
            calls, current, size = [], [], 0
            for j in group:  # pack whole jobs into calls of at most decode_chunk prompts
                if current and size + len(j.prompts) > self.config.decode_chunk:
                    calls.append(current)
                    current, size = [], 0
                current.append(j)
                size += len(j.prompts)
            calls.append(current)
            for call in calls:
                prompts = PromptBatch.cat([j.prompts for j in call]) if len(call) > 1 else call[0].prompts
                if len({j.key for j in call}) == 1:  # one image: its features, broadcast to every prompt
                    features = ImageFeatures.of(images[call[0].key].levels)
                else:  # one row per prompt, each level
                    per_level = zip(*(images[j.key].levels for j in call))
                    features = ImageFeatures.of([torch.cat([t.expand(len(j.prompts), -1, -1, -1)
                                                            for j, t in zip(call, level)]) for level in per_level])
                low, iou = self.predictor.decode(prompts, features=features)
                self.metrics.inc("swiftsam_decoder_calls_total")
                self.metrics.inc("swiftsam_decoder_prompts_total", len(prompts))
                start = 0
                for j in call:
                    n = len(j.prompts)
                    outputs[id(j)] = (low[start: start + n], iou[start: start + n])
                    start += n
        return outputs
