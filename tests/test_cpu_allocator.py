"""The torch engine on a CPU keeps large freed blocks in glibc's heap (runtime.tune_cpu_allocator)."""

from __future__ import annotations

import sys

import pytest

import swiftsam
from swiftsam import runtime
from swiftsam.engines import get_engine

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


@glibc
def test_a_cpu_torch_engine_tunes_the_allocator_once(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_allocator_tuned", None)
    real = runtime.tune_cpu_allocator
    monkeypatch.setattr("swiftsam.engines.torch_engine.tune_cpu_allocator", lambda: calls.append(1) or real())
    get_engine("torch", swiftsam.build("nanosam-r18", input_size=128).eval())
    assert calls and runtime._allocator_tuned is True
    assert runtime.tune_cpu_allocator() is True  # set once; later calls only report


@glibc
def test_the_allocator_is_left_alone_when_asked(monkeypatch):
    monkeypatch.setattr(runtime, "_allocator_tuned", None)
    monkeypatch.setenv("SWIFTSAM_MALLOC_TUNING", "0")
    assert runtime.tune_cpu_allocator() is False
