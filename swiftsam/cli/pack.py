"""``swiftsam pack``: COCO / DAVIS sources -> one class-agnostic training set of resized JPEGs."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    pk = sub.add_parser("pack", help="pack COCO / DAVIS sources into one class-agnostic training set of resized JPEGs")
    pk.add_argument("sources", nargs="+", metavar="SOURCE", help="coco:IMAGES:ANNOTATIONS or davis:ROOT")
    pk.add_argument("--out", required=True)
    pk.add_argument("--size", type=int, default=512, help="longest side of the packed images (default 512)")
    pk.add_argument("--davis-stride", type=int, default=3, help="keep every n-th DAVIS frame (default 3)")
    pk.add_argument("--no-progress", action="store_true")
    pk.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from ..train.pack import Source, pack

    summary = pack([Source.parse(x) for x in args.sources], args.out, size=args.size, davis_stride=args.davis_stride,
                   progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
