"""Command line: ``swiftsam models | download | import-onnx | segment | export | everything | bench | train | pack |
quantize | eval | serve | label | track``, one module per command (``add_parser`` + ``run``); shared options in
``common``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import SwiftSamError
from . import bench, download, everything, export, import_onnx, models, pack, quantize, segment, serve, train
from . import eval as eval_command
from . import label, track

__all__ = ["build_parser", "main"]

# in the order `swiftsam --help` lists them
COMMANDS = (models, download, import_onnx, segment, export, everything, bench, train, pack, quantize, eval_command,
            serve, label, track)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swiftsam", description="Fast Segment Anything models.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SwiftSamError as e:
        print(f"swiftsam: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
