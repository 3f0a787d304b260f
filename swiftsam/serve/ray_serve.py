"""Ray Serve: the same app on a Ray cluster, one replica per GPU (``ray`` is large: imported only here, when used).

``swiftsam serve --ray`` runs it (README "Serve", "On a Ray cluster"); from Python::

    # on the head:     ray start --head --port 6379
    # on each worker:  ray start --address HEAD:6379 --num-gpus 1
    from ray import serve
    from swiftsam.serve.ray_serve import deployment

    serve.run(deployment("swiftsam-r18", device="cuda", gpus_per_replica=1, num_replicas="auto"), route_prefix="/")

Each replica loads the model once and serves ``create_app``'s app (its routes, batching, cache, limits: the one
home of the routes) through Ray Serve's FastAPI ingress, built on the replica; Ray routes requests between replicas
and scales them between ``min_replicas`` and ``max_replicas`` by the requests ongoing on each
(``target_ongoing_requests``).
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError, SwiftSamError
from ..optional import MissingDependencyError
from .limits import ServeConfig


def _ray_serve():
    try:
        from ray import serve
    except ImportError:
        raise MissingDependencyError("the Ray Serve deployment needs Ray, which is not installed: "
                                     "pip install 'ray[serve]' (or 'swiftsam[ray]').") from None
    return serve


def deployment_options(num_replicas: int | str = 1, gpus_per_replica: float = 0.0, min_replicas: int = 1,
                       max_replicas: int = 4, target_ongoing_requests: float = 8) -> dict[str, Any]:
    """``serve.deployment``'s options: a fixed number of replicas, or (``num_replicas="auto"``) autoscaling between
    ``min_replicas`` and ``max_replicas``; ``gpus_per_replica`` GPUs reserved for each replica (0: CPU)."""
    if gpus_per_replica < 0:
        raise InputError(f"GPUs per replica must be 0 or more, got {gpus_per_replica}.")
    options: dict[str, Any] = {"ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": 1}}
    if num_replicas == "auto":
        if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
            raise InputError(f"autoscaling needs 0 <= min replicas <= max replicas and max replicas >= 1, got "
                             f"min {min_replicas}, max {max_replicas}.")
        if target_ongoing_requests <= 0:
            raise InputError(f"the target of ongoing requests per replica must be > 0, got {target_ongoing_requests}.")
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "initial_replicas": max(1, min_replicas),
                                         "target_ongoing_requests": target_ongoing_requests}
    else:
        try:
            n = int(num_replicas)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise InputError(f"replicas must be a number >= 1 or 'auto', got {num_replicas!r}.")
        options["num_replicas"] = n
    return options


def deployment(model: str = "swiftsam-r18", *, checkpoint: str | None = None, device: str | None = None,
               engine: str = "auto", config: ServeConfig | None = None, num_replicas: int | str = 1,
               gpus_per_replica: float = 0.0, min_replicas: int = 1, max_replicas: int = 4,
               target_ongoing_requests: float = 8, engine_options: dict | None = None, **model_options: Any):
    """A bound Ray Serve application serving ``model`` with ``create_app``'s app on every replica.

    ``num_replicas="auto"`` turns on Ray's autoscaling between ``min_replicas`` and ``max_replicas``;
    ``gpus_per_replica=1`` (with ``device="cuda"``) gives each replica its own GPU."""
    serve = _ray_serve()
    config = config or ServeConfig()
    options = deployment_options(num_replicas, gpus_per_replica, min_replicas, max_replicas, target_ongoing_requests)
    extra = dict(engine_options or {})

    def build_app():
        """Run on each replica when it starts: the model loaded once, the app around it."""
        from ..api import load
        from ..predictor import Predictor
        from .app import create_app

        predictor = Predictor(load(model, checkpoint=checkpoint, device=device, **model_options), engine=engine,
                              **extra)
        return create_app(predictor, config)

    class SwiftSamReplica:
        """One replica: Ray Serve hands its HTTP requests to ``build_app``'s app (lifespan included)."""

    return serve.deployment(name="swiftsam", **options)(serve.ingress(build_app)(SwiftSamReplica)).bind()


def connect(address: str | None = None, need: dict[str, float] | None = None, what: str = "the replicas",
            **init_options: Any):
    """``ray.init``: join the cluster at ``address`` (``"auto"``: the one ``ray start`` made on this machine; None:
    start a local Ray). A cluster that cannot be reached, or that has fewer of a resource than ``need`` (e.g.
    ``{"GPU": 2}``: ``what`` would wait for them for ever), is an InputError saying what to do."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--ray needs Ray, which is not installed: pip install 'swiftsam[ray]' "
                                     "(or 'ray[serve,data]').") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, ignore_reinit_error=True, **init_options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"could not join the Ray cluster at {address or 'a new local instance'}: "
                             f"{str(e).rstrip('.')}. Start one with `ray start --head` (then --ray-address auto), or "
                             f"drop --ray-address for a local one.") from e
    have = ray.cluster_resources()
    for resource, n in (need or {}).items():
        if have.get(resource, 0) < n:
            how = ("start GPU workers (`ray start --address HEAD:6379 --num-gpus 1`) or use --device cpu"
                   if resource == "GPU" else "add nodes to the cluster")
            raise InputError(f"the Ray cluster has {have.get(resource, 0):g} {resource}(s) but {what} need {n:g}: "
                             f"ask for fewer, or {how}.")
    return ray


def start(app, *, host: str = "127.0.0.1", port: int = 8000, name: str = "swiftsam") -> str:
    """Run the bound application ``app`` (``deployment(...)``) on the connected Ray cluster behind Serve's HTTP proxy
    on ``host:port``; returns once its replicas are up, with the URL."""
    serve = _ray_serve()
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, name=name, route_prefix="/", blocking=False)
    except RuntimeError as e:  # a replica that cannot start (a bad checkpoint, no GPU): its reason, not Ray's trace
        try:
            status = serve.status().applications[name]
            detail = " ".join([status.message or "", *(d.message or "" for d in status.deployments.values())])
        except Exception:  # noqa: BLE001 - the status is only for the message
            detail = str(e)
        serve.delete(name)
        raise replica_error(detail, str(e)) from None
    return f"http://{host}:{port}/"


def replica_error(detail: str, fallback: str) -> SwiftSamError:
    """The swiftsam error a Ray replica or actor raised, from the traceback text Ray reports (``fallback``, Ray's
    own message, when there is none), as the same error class with its message."""
    import re

    from .. import errors

    found = re.findall(r"swiftsam\.errors\.(\w+): ([^\n]*)", detail)
    if not found:
        return SwiftSamError(f"the Ray Serve deployment did not start: {fallback}")
    kind, message = found[-1]
    cls = getattr(errors, kind, SwiftSamError)
    cls = cls if isinstance(cls, type) and issubclass(cls, SwiftSamError) else SwiftSamError
    return cls(f"{message} (on a Ray Serve replica)")
