"""``swiftsam download``: fetch and verify a model's official checkpoint."""

from __future__ import annotations

import argparse

from ..zoo import get_entry
from ..zoo.hub import download


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("download", help="download and verify a model's official checkpoint")
    d.add_argument("name")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    path = download(get_entry(args.name), force=args.force)
    print(path)
    return 0
