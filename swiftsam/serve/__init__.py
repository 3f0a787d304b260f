"""``swiftsam serve``: an HTTP server for a model (FastAPI on uvicorn, the ``serve`` extra).

``app.create_app(predictor, ServeConfig(...))`` builds the ASGI app: ``/healthz``, ``/v1/models``, ``/metrics``,
``/v1/embed``, ``/v1/segment``, ``/v1/everything``, ``/v1/decoder.onnx`` and the browser demo at ``/``.
Concurrent requests are batched (``batching.Batcher``: one encoder call and one decoder call for the requests
that arrive within ``batch_wait_ms``), embeddings are cached by image hash (``cache.EmbeddingCache``, LRU
bounded by bytes), and every request is held to ``limits.ServeConfig``. Importing this package needs no
FastAPI: ``app`` imports it (with the install hint when it is missing).
"""

from __future__ import annotations

from .limits import ServeConfig

__all__ = ["ServeConfig"]
