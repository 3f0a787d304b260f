"""``swiftsam bench``: the results schema, the reference comparison, resume, skips and errors.

Small models and one or two iterations: these tests check the tool, not the speed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam.bench import SCHEMA, BenchConfig, chart, measure, plan, run_bench, table
from swiftsam.bench.reference import ReferenceWorkloads
from swiftsam.bench.workloads import SwiftsamWorkloads, example_boxes
from swiftsam.cli import main
from swiftsam.engines import get_engine
from swiftsam.errors import InputError
from tests.conftest import randomize_, test_image

ROW_TYPES = {
    "model": str, "implementation": str, "engine": str, "precision": str, "input_size": int, "stage": str,
    "batch_size": int, "describe": str, "median_s": float, "p90_s": float, "min_s": float, "mean_s": float,
    "iterations": int, "peak_memory_mb": float, "memory_kind": str, "throughput": float, "throughput_unit": str,
    "cell_key": str,
}


def small_config(**kw) -> BenchConfig:
    base = dict(models=["nanosam-r18"], input_sizes=[256], engines=["torch"], precisions=["fp32"],
                batch_sizes=[1, 2], prompts=[1, 3], warmup=0, iterations=2)
    return BenchConfig(**{**base, **kw})


def test_measure_statistics():
    calls = []
    t = measure(lambda: calls.append(sum(range(20000))), torch.device("cpu"), warmup=2, iterations=5)
    assert len(calls) == 7 and t.iterations == 5
    assert 0 < t.min_s <= t.median_s <= t.p90_s and t.min_s <= t.mean_s
    assert t.memory_kind == "cpu_rss" and t.peak_memory_mb > 10  # the process holds torch at least
    t = measure(lambda: None, torch.device("cpu"), warmup=0, iterations=1, min_time_s=0.02)
    assert t.iterations > 1 and t.iterations * t.mean_s >= 0.02 * 0.99


def test_results_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    config = small_config()
    doc = run_bench(config, out=out, progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["schema"] == SCHEMA
    assert {"torch", "cores", "cpu", "python"} <= set(doc["machine"])
    assert doc["config"]["models"] == ["nanosam-r18"] and doc["skipped"] == [] and doc["speedups"] == []
    rows = doc["results"]
    # 2 encoder + 2 decoder + 2 pipeline cells
    assert len(rows) == len(plan(config)) == 6
    for r in rows:
        for key, kind in ROW_TYPES.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["min_s"] <= r["median_s"] <= r["p90_s"] and r["iterations"] == 2
        assert r["input_size"] == 256 and r["memory_kind"] == "cpu_rss" and r["peak_memory_mb"] > 0
        count = r["prompts"] if r["stage"] == "decoder" else r["batch_size"]
        assert math.isclose(r["throughput"], count / r["median_s"])
        assert r["throughput_unit"] == ("prompts/s" if r["stage"] == "decoder" else "img/s")
        assert r["describe"].startswith("torch[fp32")
    stages = sorted((r["stage"], r["batch_size"], r["prompts"]) for r in rows)
    assert stages == [("decoder", 1, 1), ("decoder", 1, 3), ("encoder", 1, None), ("encoder", 2, None),
                      ("pipeline", 1, 1), ("pipeline", 2, 1)]
    text = table(doc)
    assert text.count("nanosam-r18") == 6 and "prompts/s" in text
    png = tmp_path / "chart.png"
    assert chart(doc, png, stage="pipeline") == 1
    assert Image.open(png).size == (520, 380)


def test_workloads_match_the_reference_on_the_same_weights():
    """What the comparison times on each side computes the same masks: same weights, same work."""
    ours = randomize_(swiftsam.build("mobilesam"), seed=0).eval()
    ref = ReferenceWorkloads(ours)
    assert ref.module == "mobile_sam"
    mine = SwiftsamWorkloads(ours, get_engine("torch", ours))
    image = test_image()
    boxes = example_boxes(2, image.shape[:2], seed=4)
    with torch.inference_mode():
        a = mine.segment([image, image], boxes)
        b = ref.pipeline([image, image], boxes)()
        for m, r in zip(a, b):
            r = r[0, 0].numpy()
            assert m.shape == r.shape == image.shape[:2]
            inter, union = np.logical_and(m.numpy(), r).sum(), np.logical_or(m.numpy(), r).sum()
            assert union > 0 and inter / union > 0.99
        emb = ours.image_encoder(ours.preprocess(image)[0])
        low, iou = mine.decoder(emb, boxes, image.shape[:2])()
        ref_low, ref_iou = ref.decoder(emb, boxes, image.shape[:2])()
    torch.testing.assert_close(low[:, 1:], ref_low, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou[:, 1:], ref_iou, atol=1e-4, rtol=1e-4)


def test_compare_reference_gives_ratios(tmp_path):
    config = BenchConfig(models=["mobilesam"], engines=["torch"], precisions=["fp32"], stages=["decoder", "pipeline"],
                         prompts=[1], warmup=0, iterations=1, compare_reference=True)
    doc = run_bench(config, out=tmp_path / "b.json", progress=False)
    impls = sorted((r["implementation"], r["stage"]) for r in doc["results"])
    assert impls == [("reference", "decoder"), ("reference", "pipeline"), ("swiftsam", "decoder"),
                     ("swiftsam", "pipeline")]
    assert all(r["describe"] == "mobile_sam eager" for r in doc["results"] if r["implementation"] == "reference")
    assert len(doc["speedups"]) == 2
    by_stage = {r["stage"]: r for r in doc["results"] if r["implementation"] == "reference"}
    for s in doc["speedups"]:
        mine = next(r for r in doc["results"] if r["implementation"] == "swiftsam" and r["stage"] == s["stage"])
        assert math.isclose(s["speedup_vs_reference"], by_stage[s["stage"]]["median_s"] / mine["median_s"])
        assert s["speedup_vs_reference_fp32"] == s["speedup_vs_reference"]
    ours = [ln for ln in table(doc).splitlines() if ln.startswith("mobilesam") and "reference" not in ln]
    assert len(ours) == 2 and all(ln.rstrip().endswith("x") for ln in ours)


def test_resume_keeps_earlier_cells_and_refuses_other_settings(tmp_path):
    out = tmp_path / "b.json"
    first = run_bench(small_config(batch_sizes=[1], stages=["encoder"]), out=out, progress=False)
    with pytest.raises(InputError, match="--resume"):
        run_bench(small_config(batch_sizes=[1], stages=["encoder"]), out=out, progress=False)
    with pytest.raises(InputError, match="iterations 2 -> 3"):
        run_bench(small_config(batch_sizes=[1, 2], stages=["encoder"], iterations=3), out=out, resume=True,
                  progress=False)
    second = run_bench(small_config(batch_sizes=[1, 2], stages=["encoder"]), out=out, resume=True, progress=False)
    assert len(second["results"]) == 2
    assert second["results"][0] == first["results"][0]  # not measured again
    assert second["results"][1]["batch_size"] == 2
    assert json.loads(out.read_text())["results"] == second["results"]


def test_unsupported_cells_are_skipped_with_reasons(tmp_path):
    config = BenchConfig(models=["nanosam-r18", "mobilesam"], input_sizes=[256], engines=["onnxruntime"],
                         precisions=["bf16"], stages=["encoder"], warmup=0, iterations=1, compare_reference=True)
    doc = run_bench(config, progress=False)
    assert doc["results"] == []
    reasons = {(s["model"], s["implementation"]): s["reason"] for s in doc["skipped"]}
    assert "TensorRT engines only" in reasons[("nanosam-r18", "reference")]
    assert "fp32 graphs only" in reasons[("nanosam-r18", "swiftsam")]
    assert "own input size" in reasons[("mobilesam", "reference")]
    assert "1024 x 1024 inputs only" in reasons[("mobilesam", "swiftsam")]
    assert "skipped 1 cell: nanosam-r18 reference bf16 size 256" in table(doc)


@pytest.mark.parametrize("argv, message", [
    (["--engines", "torch,jax"], "unknown engine jax"),
    (["--precisions", "int4"], "unknown precision int4"),
    (["--models", "sam-vit-q"], "sam-vit-q"),
    (["--batch-sizes", "0"], "batch size must be >= 1"),
    (["--input-sizes", "100"], "multiples of 16"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--image", "/nonexistent.jpg"], "cpu|no such file"),
])
def test_cli_errors(argv, message, capsys):
    assert main(["bench", "--no-progress", *argv]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_cli_writes_json_table_and_chart(tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", "--no-progress", "--models", "nanosam-r18", "--input-sizes", "256,320", "--stages",
               "encoder,pipeline", "--batch-sizes", "1,2", "--warmup", "0", "--iterations", "1", "--out", str(out),
               "--chart", str(png)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert sorted({r["input_size"] for r in doc["results"]}) == [256, 320] and len(doc["results"]) == 8
    assert "median ms" in capsys.readouterr().out
    assert Image.open(png).size == (520, 380)
    # an earlier result re-rendered as markdown, without measuring again
    assert main(["bench", "--report", str(out), "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "### encoder" in text and "### pipeline" in text and "### decoder" not in text
    assert text.count("| nanosam-r18 | 256 |") == 2 * 2  # 2 stages x 2 batch sizes at 256
    assert main(["bench", "--report", str(tmp_path / "nope.json")]) == 2
