"""Ray Serve: the same app on a Ray cluster, one replica per GPU (``ray`` is large: imported only here, when used).

Recipe (a head node and GPU workers; see README "Serve")::

    # on the head:     ray start --head --port 6379
    # on each worker:  ray start --address HEAD:6379 --num-gpus 1
    from ray import serve
    from swiftsam.serve.ray_serve import deployment

    serve.run(deployment("swiftsam-r18", device="cuda", num_replicas="auto"), route_prefix="/")

Each replica loads the model once and serves ``create_app``'s routes (batching, cache, limits) through Ray Serve's
FastAPI ingress; Ray routes requests between replicas and scales them between ``min_replicas`` and
``max_replicas`` by the requests waiting on each (``target_ongoing_requests``).
"""

from __future__ import annotations

from typing import Any

from ..optional import MissingDependencyError
from .limits import ServeConfig


def _ray_serve():
    try:
        from ray import serve
    except ImportError:
        raise MissingDependencyError("the Ray Serve deployment needs Ray, which is not installed: "
                                     "pip install 'ray[serve]'.") from None
    return serve


def deployment(model: str = "swiftsam-r18", *, checkpoint: str | None = None, device: str | None = None,
               engine: str = "auto", config: ServeConfig | None = None, num_replicas: int | str = 1,
               gpus_per_replica: float = 0.0, min_replicas: int = 1, max_replicas: int = 4,
               target_ongoing_requests: int = 8, **model_options: Any):
    """A bound Ray Serve application serving ``model`` with ``create_app``'s routes on every replica.

    ``num_replicas="auto"`` turns on Ray's autoscaling between ``min_replicas`` and ``max_replicas``;
    ``gpus_per_replica=1`` (with ``device="cuda"``) gives each replica its own GPU."""
    serve = _ray_serve()
    config = config or ServeConfig()
    options: dict[str, Any] = {"ray_actor_options": {"num_gpus": gpus_per_replica}}
    if num_replicas == "auto":
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": target_ongoing_requests}
    else:
        options["num_replicas"] = int(num_replicas)

    class SwiftSamReplica:
        """One replica: the model loaded once, ``create_app``'s app, each Ray request handed to it."""

        def __init__(self) -> None:
            from ..api import load
            from ..predictor import Predictor
            from .app import create_app

            predictor = Predictor(load(model, checkpoint=checkpoint, device=device, **model_options), engine=engine)
            self.forward = AppForwarder(create_app(predictor, config))

        async def __call__(self, request):
            return await self.forward(request)

    return serve.deployment(name="swiftsam", **options)(SwiftSamReplica).bind()


class AppForwarder:
    """Hands a Starlette request (what Ray Serve gives a deployment) to the app, with its lifespan started on first
    use, and returns the app's answer as a Starlette response."""

    def __init__(self, app) -> None:
        self.app = app
        self._lifespan = None

    async def __call__(self, request):
        import httpx
        from starlette.responses import Response

        if self._lifespan is None:
            inner = self.app.app
            self._lifespan = inner.router.lifespan_context(inner)
            await self._lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            answer = await client.request(request.method, request.url.path, params=request.query_params,
                                          headers=[(k, v) for k, v in request.headers.items() if k != "host"],
                                          content=await request.body())
        headers = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-encoding")}
        return Response(answer.content, status_code=answer.status_code, headers=headers)
