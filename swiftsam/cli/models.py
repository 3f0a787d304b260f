"""``swiftsam models``: the model zoo and what is cached."""

from __future__ import annotations

import argparse

from ..api import DEFAULT_MODEL
from ..zoo import get_entry, list_models
from ..zoo.bundled import WEIGHTS_DIR
from ..zoo.hub import cached_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the model zoo and what is cached").set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    rows = [("name", "family", "input", "MB", "cached", "description")]
    for name in list_models():
        e = get_entry(name)
        cached = "-" if e.weights is None else ("yes" if cached_path(e.weights).exists() else "no")
        mb = "-" if e.weights is None or e.weights.size_mb is None else f"{e.weights.size_mb:.0f}"
        if e.bundled is not None:
            cached = "bundled"
            mb = f"{sum((WEIGHTS_DIR / f).stat().st_size for f in e.bundled.files if (WEIGHTS_DIR / f).exists()) / 2**20:.0f}"
        default = " (default)" if name == DEFAULT_MODEL else ""
        rows.append((name + default, e.family, str(e.spec.input_size), mb, cached, e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0
