"""Benchmarks: time swiftsam models (and the authors' reference code on the same weights) per engine,
precision, batch size and input size. ``swiftsam bench`` is the command line."""

from .measure import Timing, measure
from .report import chart, markdown, table
from .sweep import SCHEMA, BenchConfig, Cell, plan, run_bench, speedups

__all__ = ["SCHEMA", "BenchConfig", "Cell", "Timing", "chart", "markdown", "measure", "plan", "run_bench", "speedups", "table"]
