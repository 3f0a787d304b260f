"""``swiftsam bench``: time models x engines x precisions x batch sizes (optionally vs the reference)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..api import DEFAULT_MODEL
from ..errors import InputError
from ..runtime import resolve_device
from .common import add_device_argument


def _list(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _size(text: str) -> int | None:
    return None if text == "native" else int(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="time models x engines x precisions x batch sizes (optionally vs the reference)")
    b.add_argument("--models", type=_list(str), default=[DEFAULT_MODEL], help="comma-separated zoo names")
    b.add_argument("--engines", type=_list(str), default=["torch"],
                   help="comma-separated: torch, torch-compile, torch-cudagraphs, onnxruntime, tensorrt, openvino")
    b.add_argument("--precisions", type=_list(str), default=["fp32"], help="comma-separated: fp32, bf16, fp16, int8 (openvino)")
    b.add_argument("--batch-sizes", type=_list(int), default=[1], help="images per encoder / pipeline call")
    b.add_argument("--input-sizes", type=_list(_size), default=[None],
                   help="encoder input sides, or 'native' (other sizes only for models built for them, e.g. NanoSAM)")
    b.add_argument("--prompts", type=_list(int), default=[1, 8, 64], help="box prompts per decoder call")
    b.add_argument("--stages", type=_list(str), default=["encoder", "decoder", "pipeline"])
    b.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    b.add_argument("--iterations", type=int, default=10, help="timed calls (at least)")
    b.add_argument("--min-time", type=float, default=0.0, help="keep timing until this many seconds have passed")
    b.add_argument("--compare-reference", action="store_true",
                   help="also time the authors' code (segment-anything, mobilesam-mirror, efficientsam) on the same weights")
    add_device_argument(b)
    b.add_argument("--threads", type=int, help="torch (and onnxruntime / openvino) threads")
    layout = b.add_mutually_exclusive_group()
    layout.add_argument("--channels-last", dest="channels_last", action="store_const", const=True,
                        help="torch engines: channels-last images (default: the layout measured faster for the family, "
                             "device and precision)")
    layout.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                        help="torch engines: NCHW images")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--image", help="image for the pipeline (default: a synthetic 480 x 640 image)")
    b.add_argument("--out", help="results JSON, rewritten after every cell")
    b.add_argument("--resume", action="store_true", help="continue the sweep already in --out")
    b.add_argument("--chart", help="PNG: latency vs throughput per model")
    b.add_argument("--markdown", action="store_true", help="print markdown tables instead of the terminal table")
    b.add_argument("--report", metavar="JSON", help="do not measure: print (and chart) an earlier result")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, markdown, run_bench, table

    if args.report:
        try:
            doc = json.loads(Path(args.report).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"--report {args.report}: cannot read a bench result ({e}).") from None
        if "results" not in doc:
            raise InputError(f"--report {args.report}: not a swiftsam bench result.")
        print(markdown(doc) if args.markdown else table(doc))
        _bench_chart(doc, args.chart)
        return 0
    config = BenchConfig(
        models=args.models, engines=args.engines, precisions=args.precisions, batch_sizes=args.batch_sizes,
        input_sizes=args.input_sizes, prompts=args.prompts, stages=args.stages, warmup=args.warmup,
        iterations=args.iterations, min_time_s=args.min_time, compare_reference=args.compare_reference,
        device=str(resolve_device(args.device)), threads=args.threads, channels_last=args.channels_last,
        seed=args.seed, image=args.image,
    )
    doc = run_bench(config, out=args.out, resume=args.resume, progress=not args.no_progress)
    print(markdown(doc) if args.markdown else table(doc))
    _bench_chart(doc, args.chart)
    return 0


def _bench_chart(doc: dict, path: str | None) -> None:
    from ..bench import chart

    if not path:
        return
    stages = [r["stage"] for r in doc["results"]]
    stage = "pipeline" if "pipeline" in stages else (stages[0] if stages else "pipeline")
    try:
        chart(doc, path, stage=stage)
    except ValueError as e:
        raise InputError(f"--chart: {e}") from None
    print(f"chart: {path}", file=sys.stderr)
