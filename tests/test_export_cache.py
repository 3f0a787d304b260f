"""Exported-graph caches are keyed by the code that traces the graphs, not only by the weights."""

from __future__ import annotations

import swiftsam
from swiftsam.export import onnx as onnx_export


def test_graphs_traced_by_other_code_are_exported_again(tmp_path, monkeypatch):
    model = swiftsam.build("nanosam-r18", input_size=128).eval()
    first = onnx_export.cached_export(model, tmp_path, ["decoder"])
    assert onnx_export.cached_export(model, tmp_path, ["decoder"]) == first  # same code, same weights: reused
    assert onnx_export.code_fingerprint() in first.name
    # an upgrade that changes swiftsam/modeling or swiftsam/export changes the fingerprint
    monkeypatch.setattr(onnx_export, "code_fingerprint", lambda: "0123456789ab")
    second = onnx_export.cached_export(model, tmp_path, ["decoder"])
    assert second != first and (second / "decoder.onnx").exists()

