"""``swiftsam serve``: the HTTP server (``swiftsam.serve``; needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import dataclasses

from ..api import DEFAULT_MODEL
from ..errors import InputError
from .common import add_device_argument, add_engine_arguments, add_input_size_argument, engine_options, load_model, max_pixels


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("serve", help="HTTP server: embed / segment / everything / track, dynamic batching, a browser demo")
    a.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL}, or the model of --onnx-dir)")
    a.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    add_input_size_argument(a)
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                       "0.0.0.0 for every interface, with --token)")
    a.add_argument("--port", type=int, default=8000)
    a.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body, MB (larger: 413)")
    a.add_argument("--max-pixels", type=max_pixels, default=40_000_000, metavar="N",
                   help="largest image, pixels, read from its header before decoding (larger: 413; default 40 MP; "
                        "0: no limit)")
    a.add_argument("--max-prompts", type=int, default=64, help="most prompts in one /v1/segment or /v1/track request")
    a.add_argument("--max-track-frames", type=int, default=300, help="most frames in one /v1/track clip (more: 400)")
    a.add_argument("--max-track-sessions", type=int, default=4,
                   help="most live /v1/track/sessions (SAM 2 models; more: 503; one idle 5 minutes makes room)")
    a.add_argument("--allow-url", action="append", default=[], metavar="PREFIX",
                   help="let clients send images as 'image_url' under this http(s) URL prefix, e.g. "
                        "https://images.example.com/ (repeatable; default: none, image URLs are refused with 403)")
    a.add_argument("--max-batch", type=int, default=None,
                   help="most requests that share one encoder / decoder call (1: no batching; default 8 on a GPU, "
                        "1 on a CPU, where batching measured slower end to end: benchmarks/serve.md)")
    a.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long the first request of a batch waits for others (0: only those already waiting)")
    a.add_argument("--max-queue", type=int, default=64, help="requests waiting for the model; more get 503")
    a.add_argument("--timeout", type=float, default=60.0, help="seconds before a request gets 504")
    a.add_argument("--cache-mb", type=float, default=256.0, help="embedding cache by image hash, MB (0: none)")
    a.add_argument("--token", help="bearer token that /v1/* and /metrics require (default: none, an open server); "
                                   "or set SWIFTSAM_TOKEN")
    a.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    r = a.add_argument_group("Ray Serve (pip install 'swiftsam[ray]'; README \"On a Ray cluster\")")
    r.add_argument("--ray", action="store_true", help="serve the same app as a Ray Serve deployment (replicas on a "
                                                      "Ray cluster; --device cuda: one GPU per replica)")
    r.add_argument("--ray-address", metavar="ADDRESS",
                   help="--ray: the cluster to join (auto: the one `ray start` made here; HOST:6379; default: start a "
                        "local Ray)")
    r.add_argument("--replicas", default="1", metavar="N|auto",
                   help="--ray: number of replicas, or auto: autoscaling between --min-replicas and --max-replicas")
    r.add_argument("--min-replicas", type=int, default=1, help="--ray --replicas auto: fewest replicas (default 1)")
    r.add_argument("--max-replicas", type=int, default=4, help="--ray --replicas auto: most replicas (default 4)")
    r.add_argument("--target-ongoing-requests", type=float, default=8,
                   help="--ray --replicas auto: requests in flight per replica that autoscaling aims for (default 8)")
    add_device_argument(a)
    add_engine_arguments(a)
    a.set_defaults(fn=run)


def config_from_args(args: argparse.Namespace):
    import os

    from ..serve.limits import ServeConfig

    if not 0 < args.port < 65536:
        raise InputError(f"--port must be 1..65535, got {args.port}.")
    token = args.token if args.token is not None else os.environ.get("SWIFTSAM_TOKEN")
    if args.max_pixels == "pil":  # PIL's own limit
        from PIL import Image

        args.max_pixels = Image.MAX_IMAGE_PIXELS
    return ServeConfig(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                       max_prompts=args.max_prompts, max_batch=8 if args.max_batch is None else args.max_batch, batch_wait_ms=args.batch_wait_ms,
                       max_queue=args.max_queue, request_timeout_s=args.timeout, cache_mb=args.cache_mb, token=token,
                       max_track_frames=args.max_track_frames, max_track_sessions=args.max_track_sessions,
                       allow_urls=tuple(args.allow_url))


def run(args: argparse.Namespace) -> int:
    from ..optional import require

    config = config_from_args(args)  # settings checked before the model loads
    if not args.ray and (args.ray_address or args.replicas != "1"):
        raise InputError("--ray-address and --replicas are for --ray: add --ray, or drop them.")
    if args.ray:
        return run_ray(args, config)
    uvicorn = require("uvicorn", "swiftsam serve")
    from ..predictor import Predictor
    from ..serve.app import create_app

    model = load_model(args, args.model)
    if args.max_batch is None:
        config = dataclasses.replace(config, max_batch=8 if model.device.type == "cuda" else 1)
    predictor = Predictor(model, engine=args.engine, **engine_options(args))
    app = create_app(predictor, config)
    print(f"swiftsam serve: {args.model} on {predictor.engine.describe()}; http://{args.host}:{args.port}/ "
          f"(batching up to {config.max_batch} requests within {config.batch_wait_ms:g} ms"
          f"{'; bearer token required' if config.token else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def run_ray(args: argparse.Namespace, config) -> int:
    """``--ray``: ``create_app``'s app on Ray Serve replicas (the model loads on each replica, not here)."""
    from ..serve import ray_serve
    from .common import input_size_option

    device = (args.device or "auto").strip().lower()
    gpus = 1.0 if device.startswith("cuda") else 0.0  # Ray gives each replica its GPU as its cuda:0
    if args.max_batch is None:
        config = dataclasses.replace(config, max_batch=8 if gpus else 1)
    app = ray_serve.deployment(args.model or DEFAULT_MODEL, checkpoint=args.checkpoint,
                               device="cuda" if gpus else (None if device == "auto" else device), engine=args.engine,
                               engine_options=engine_options(args), config=config, num_replicas=args.replicas,
                               gpus_per_replica=gpus, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                               target_ongoing_requests=args.target_ongoing_requests,
                               **input_size_option(args, args.model))
    first = max(1, args.min_replicas) if args.replicas == "auto" else int(args.replicas)  # checked by deployment()
    ray = ray_serve.connect(args.ray_address, need={"GPU": first * gpus} if gpus else {"CPU": first},
                            what=f"{first} replica(s)")
    url = ray_serve.start(app, host=args.host, port=args.port)
    print(f"swiftsam serve --ray: {args.model or DEFAULT_MODEL}, {args.replicas} replica(s) "
          f"({'1 GPU' if gpus else 'CPU'} each) on Ray {ray.__version__}; {url} (Ctrl-C stops)", flush=True)
    try:
        _wait()
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


def _wait() -> None:
    """Until Ctrl-C (the replicas run in Ray, not in this process)."""
    import time

    while True:
        time.sleep(3600)
