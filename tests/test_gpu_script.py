"""benchmarks/gpu.py, the one prepared GPU measurement of issue 19: its smoke mode runs every section on a CPU
and writes a JSON with each of them (a measurement, or why not); the time budget stops it cleanly."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out),
                           "--budget", "300"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    gpu = load_script()
    assert doc["schema"] == gpu.SCHEMA and doc["smoke"] is True
    assert doc["machine"]["torch"] and "CUDA" in doc["machine_line"]
    assert list(doc["sections"]) == list(gpu.SECTIONS)
    for name, section in doc["sections"].items():
        assert section["status"] == "done", (name, section.get("why"))
        assert section["rows"], name  # every section measured something, even on a CPU
        assert "summary" in section, name
        assert all("median_s" in r or "interval_s" in r for r in section["rows"])
    s = doc["sections"]
    # the pipeline sections: the pipeline and the encoder at the same batch, and their ratio
    for name in ("nanosam_pipeline", "mobilesam_pipeline"):
        stages = {r["stage"] for r in s[name]["rows"]}
        assert stages == {"encoder", "pipeline"} and s[name]["summary"]["pipeline_over_encoder"] > 0
        assert s[name]["commands"][0].startswith("swiftsam bench --models ")
    assert {r["prompts"] for r in s["decoder"]["rows"]} == {1, 4}
    # the reference package is missing here (no torchvision): the reference cells say why
    ref = [c for c in s["efficientvit_reference"]["skipped"] if c["implementation"] == "reference"]
    assert ref and all("efficientsam" in c["reason"] for c in ref)
    assert {r["channels_last"] for r in s["efficientvit_reference"]["rows"]} == {True, False}
    train = s["train"]["summary"]
    assert train["img_s"] > 0 and 0 <= train["data_wait_fraction"] <= 1
    # the markdown table for benchmarks/gpu.md: a row per target
    assert proc.stdout.count("\n| ") >= 6 and "SMOKE run" in proc.stdout


def test_budget_stops_a_section_cleanly_and_skips_the_rest(tmp_path, monkeypatch):
    gpu = load_script()

    def slow(section, plan, model, target):
        section["rows"].append({"median_s": 1.0})
        time.sleep(30)

    monkeypatch.setattr(gpu, "pipeline_section", slow)
    monkeypatch.setattr(gpu, "machine", lambda device: {"torch": "x", "python": "3", "cpu": "cpu"})  # fast start
    out = tmp_path / "gpu.json"
    args = gpu.argparse.Namespace(device="cpu", smoke=True, only=None, budget=1.5, out=str(out), train_seconds=1.0)
    doc = gpu.run(args)
    saved = json.loads(out.read_text())
    assert saved["sections"] == json.loads(json.dumps(doc["sections"], default=str))
    first = saved["sections"]["nanosam_pipeline"]  # "partial": stopped during the 30 s sleep, what it had kept
    assert first["status"] == "partial" and "budget" in first["why"] and first["rows"] == [{"median_s": 1.0}]
    for name in gpu.SECTIONS[1:]:
        assert saved["sections"][name]["status"] == "skipped" and "budget" in saved["sections"][name]["why"]
    assert "skipped: time budget" in gpu.markdown(saved)


def test_unknown_section_is_refused():
    gpu = load_script()
    with pytest.raises(SystemExit, match="unknown section"):
        gpu.main(["--smoke", "--device", "cpu", "--only", "nanosam,train"])


def test_summaries_compare_in_the_same_precision(monkeypatch):
    """The efficientvit ratios divide the reference's time by ours in the same precision (the issue: bench once
    divided the reference's fp32 time by our bf16 time); the pipeline share is against the compiled encoder."""
    gpu = load_script()
    times = {("reference", "fp32"): 2.0, ("reference", "bf16"): 1.0, ("swiftsam", "fp32"): 1.0,
             ("swiftsam", "bf16"): 2.0}

    def fake_sweep(section, plan, native=False, **kw):
        if kw["stages"] == ["encoder", "pipeline"]:
            engine, t = kw["engines"][0], {"torch-compile": 0.01, "torch": 0.02}[kw["engines"][0]]
            for stage, scale in (("encoder", 1.0), ("pipeline", 2.0)):
                s = t * scale
                section["rows"].append({"stage": stage, "engine": engine, "precision": plan.low, "median_s": s,
                                        "throughput": kw["batch_sizes"][0] / s})
            return
        impls = ["swiftsam"] + (["reference"] if kw.get("compare_reference") else [])
        for impl in impls:
            for p in kw["precisions"]:
                for b in kw["batch_sizes"]:
                    t = times[impl, p] * b
                    section["rows"].append({"implementation": impl, "precision": p, "batch_size": b, "median_s": t,
                                            "throughput": b / t})

    monkeypatch.setattr(gpu, "sweep", fake_sweep)
    plan = gpu.Plan(smoke=False, device=gpu.torch.device("cpu"))
    section = {"rows": [], "skipped": [], "notes": []}
    gpu.efficientvit_section(section, plan)
    s = section["summary"]
    assert s["batch 1 fp32 channels_last"]["speedup_same_precision"] == 2.0
    assert s["batch 32 bf16 contiguous"]["speedup_same_precision"] == 0.5
    assert s["met"] is False  # bf16 is slower than the reference's bf16, whatever our fp32 does
    section = {"rows": [], "skipped": [], "notes": []}
    gpu.pipeline_section(section, plan, "nanosam-r18", 2000.0)
    s = section["summary"]
    assert s["pipeline_over_encoder"] == 0.5 and s["ratio_against"] == "torch-compile bf16 encoder"
    assert s["pipeline_img_s"] == 32 / 0.02 and s["met"] is False  # 1,600 img/s < 2,000
