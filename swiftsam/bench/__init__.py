"""Benchmarks: time swiftsam models (and the authors' reference code on the same weights) per engine,
precision, batch size and input size. ``swiftsam bench`` is the command line."""

from .measure import Timing, measure
from .report import chart, markdown, table
from .sweep import SCHEMA, BenchConfig, Cell, best_vs_best, plan, run_bench, speedups

__all__ = ["SCHEMA", "BenchConfig", "Cell", "Timing", "best_vs_best", "chart", "markdown", "measure", "plan", "run_bench", "speedups", "table"]
