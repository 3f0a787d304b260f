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
