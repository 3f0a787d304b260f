"""The OpenVINO engine: fp32 parity with torch for every family, its caches and errors, INT8 from NNCF, the measured
``auto`` choice, and the bench's ratio columns."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import swiftsam
from swiftsam.engines import auto, get_engine
from swiftsam.errors import EngineError, InputError
from swiftsam.modeling.prompt_decoder import PromptDecoder
from swiftsam.optional import MissingDependencyError
from tests.conftest import have, randomize_

needs_openvino = pytest.mark.skipif(not (have("openvino") and have("onnx")), reason="openvino is not installed")

# one member per family, reduced where the full model is slow to convert on 2 cores (as tests/test_engines.py)
FAMILIES = [
    ("sam-vit-b", {"depth": 2}),
    ("mobilesam", {}),
    ("efficientvit-sam-l0", {}),
    ("efficientvit-sam-xl0", {"depth_scale": 0.34}),
    ("nanosam-r18", {"input_size": 256}),
    ("swiftsam-r18", {}),  # the bundled trained weights, 256 px
]


def flat_prompts(seed: int = 3):
    """Three prompts of 4 flat points: clicks + padding, a box, clicks + a box with a mask input."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(3, 4, 2, generator=g) * 1000
    labels = torch.tensor([[1, 0, 1, -1], [2, 3, -1, -1], [1, 0, 2, 3]], dtype=torch.float32)
    return coords, labels, torch.randn(3, 1, 256, 256, generator=g), torch.tensor([0.0, 0.0, 1.0])


def embedding(features) -> torch.Tensor:
    return getattr(features, "embedding", features)  # an ImageFeatures (its first level) or a lone tensor


def build(name: str, **kw) -> swiftsam.Sam:
    model = swiftsam.build(name, **kw)
    return (model if name == "swiftsam-r18" else randomize_(model, 0)).eval()


@needs_openvino
@pytest.mark.parametrize("name,kw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_fp32_matches_torch_for_every_family(name, kw):
    model = build(name, **kw)
    engine = get_engine("openvino", model)
    s = model.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model.image_encoder(x)
        ref_low, ref_iou = PromptDecoder(model)(ref, *flat_prompts())[:2]
    emb = embedding(engine.encode(x))
    assert emb.shape == ref.shape and emb.dtype == torch.float32
    assert (emb - ref).abs().max() < 1e-3
    low, iou = engine.decode(ref, *flat_prompts())[:2]
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape
    assert (low - ref_low).abs().max() < 1e-3
    assert (iou - ref_iou).abs().max() < 1e-3


@pytest.fixture(scope="module")
def small(_session_home):
    """A small random model (NanoSAM at 256 px) converted once for the tests below."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWIFTSAM_HOME", str(_session_home))
        model = build("nanosam-r18", input_size=256)
        return model, get_engine("openvino", model)


@needs_openvino
def test_batches_and_predictor_agree_with_torch(small):
    model, engine = small
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model.image_encoder(x)
    assert (embedding(engine.encode(x)) - ref).abs().max() < 1e-3  # a second batch size: compiled on its own
    assert (embedding(engine.encode(x[:1])) - ref[:1]).abs().max() < 1e-3
    assert set(engine._encoders) == {1, 2}
    # the decoder runs at most decode_chunk prompts per call; chunks give the same outputs (shared or per-prompt image)
    for emb in (ref[:1], ref[:1].expand(3, -1, -1, -1)):
        whole = engine.decode(emb, *flat_prompts())
        engine.decode_chunk = 2
        try:
            chunked = engine.decode(emb, *flat_prompts())
        finally:
            engine.decode_chunk = 16
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, chunked, strict=True))
        assert chunked[0].shape[0] == 3
    image = (torch.rand(120, 160, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    a = swiftsam.Predictor(model, engine="torch", fold_bn=False)
    b = swiftsam.Predictor(model, engine=engine)
    for p in (a, b):
        p.set_image(image)
    box = [10, 20, 120, 100]
    ma, sa, _ = a.predict(box=box)
    mb, sb, _ = b.predict(box=box)
    assert (abs(sa - sb) < 1e-3).all()
    assert (ma == mb).mean() > 0.999


@needs_openvino
def test_conversion_and_compiled_models_are_cached(small, monkeypatch):
    import openvino

    from swiftsam.engines import openvino_engine as ove

    model, engine = small
    folder = ove.ir_folder(model)
    assert engine.folder == folder and (folder / "encoder.xml").exists() and (folder / "decoder.xml").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["openvino"] == ove.openvino_version() and manifest["fingerprint"] in folder.name
    assert folder.name.endswith(f"-ov{ove.openvino_version()}-onnx")
    assert any((folder / "compiled" / "fp32").iterdir())  # OpenVINO's compiled-model cache
    mtime = (folder / "encoder.xml").stat().st_mtime_ns

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    monkeypatch.setattr(ove, "cached_export", no_conversion)
    again = get_engine("openvino", model)
    assert again.folder == folder and (folder / "encoder.xml").stat().st_mtime_ns == mtime
    other = build("nanosam-r18", input_size=256)
    with torch.no_grad():
        next(other.image_encoder.parameters()).mul_(2)  # other weights: another folder, so a conversion
    with pytest.raises(AssertionError, match="converted again"):
        get_engine("openvino", other)


@needs_openvino
def test_engine_options_and_errors(small, monkeypatch):
    from swiftsam.engines import openvino_engine as ove

    model, _ = small
    with pytest.raises(EngineError, match="precision must be one of fp32, bf16, int8"):
        get_engine("openvino", model, precision="fp16")
    with pytest.raises(EngineError, match="hint must be one of"):
        get_engine("openvino", model, hint="fast")
    with pytest.raises(EngineError, match="threads must be >= 1"):
        get_engine("openvino", model, threads=0)
    with pytest.raises(EngineError, match="decode_chunk must be >= 1"):
        get_engine("openvino", model, decode_chunk=0)
    with pytest.raises(EngineError, match="source must be one of"):
        get_engine("openvino", model, source="tflite")
    with pytest.raises(EngineError, match="no INT8 OpenVINO encoder for nanosam-r18 yet.*swiftsam quantize "
                                          "nanosam-r18 --backend openvino"):
        get_engine("openvino", model, precision="int8")
    e = get_engine("openvino", model, threads=1, streams=1, hint="throughput", cache=False)
    assert e.describe() == "openvino[fp32, throughput, 1 threads, 1 streams]" and e.cache_dir is None
    assert embedding(e.encode(torch.zeros(1, 3, 256, 256))).shape == (1, 256, 64, 64)

    class NoBf16:
        def __init__(self, real):
            self.real = real

        def get_property(self, device, name):
            return ["FP32", "INT8"] if name == "OPTIMIZATION_CAPABILITIES" else self.real.get_property(device, name)

    import openvino

    real_core = openvino.Core
    monkeypatch.setattr(openvino, "Core", lambda: NoBf16(real_core()))
    with pytest.raises(EngineError, match="no bf16 kernels"):
        ove.OpenVINOEngine(model, precision="bf16")


@needs_openvino
def test_float_export_folder_runs_and_int8_needs_a_quantized_one(small, tmp_path):
    from swiftsam.engines.ort_engine import onnx_cache_dir
    from swiftsam.export.onnx import cached_export

    model, _ = small
    folder = cached_export(model, onnx_cache_dir(), ("encoder", "decoder"))  # the export the engine converted
    engine = get_engine("openvino", model, onnx_dir=folder)
    assert engine.folder == folder and folder not in engine.cache_dir.parents  # compiled models never go into it
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert (embedding(engine.encode(x)) - model.image_encoder(x)).abs().max() < 1e-3
    with pytest.raises(EngineError, match="holds a float encoder"):
        get_engine("openvino", model, onnx_dir=folder, precision="int8")
    with pytest.raises(EngineError, match="missing or unreadable"):
        get_engine("openvino", model, onnx_dir=tmp_path / "nothing")


@needs_openvino
@pytest.mark.skipif(not have("nncf"), reason="nncf is not installed")
def test_nncf_int8_encoder_is_cached_and_close_to_fp32(small, monkeypatch):
    from swiftsam.engines import openvino_engine as ove
    from swiftsam.quant.openvino_int8 import quantize_openvino

    model, fp32 = small
    monkeypatch.setattr(ove, "INT8_AGREEMENT", {"nanosam": 0.99})
    assert get_engine("openvino", model).precision == "fp32"  # agreement holds, but no INT8 encoder yet
    g = torch.Generator().manual_seed(5)
    calib = [torch.randn(1, 3, 256, 256, generator=g) for _ in range(4)]
    manifest = quantize_openvino(model, calib)
    assert manifest["quantization"]["backend"] == "openvino" and manifest["quantization"]["calibration_images"] == 4
    engine = get_engine("openvino", model, precision="int8")
    assert engine.describe().startswith("openvino[int8")
    x = calib[0]
    ref, out = embedding(fp32.encode(x)), embedding(engine.encode(x))
    assert not torch.equal(ref, out)  # really another (quantized) encoder
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.95
    with pytest.raises(InputError, match="no calibration images"):
        quantize_openvino(model, [])
    # the default precision: int8 only for a family whose measured agreement is >= 0.98
    assert get_engine("openvino", model).precision == "int8"
    monkeypatch.setattr(ove, "INT8_AGREEMENT", {"nanosam": 0.97})
    assert get_engine("openvino", model).precision == "fp32"
    assert get_engine("openvino", model, precision="int8").precision == "int8"


def test_missing_openvino_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    model = swiftsam.build("nanosam-r18", input_size=256)
    with pytest.raises(MissingDependencyError, match=r"pip install 'swiftsam\[openvino\]'"):
        get_engine("openvino", model)


def test_auto_follows_this_machines_measurement(monkeypatch):
    model = swiftsam.build("nanosam-r18", input_size=256)
    monkeypatch.setattr(auto, "installed", lambda engine: True)
    monkeypatch.delenv(auto.CALIBRATE_ENV, raising=False)
    # no calibration yet: the measured table
    table = auto.MEASURED[("nanosam", "fp32")]
    assert auto.resolve(model, {}) == (table[0], auto.engine_options(table[0], "fp32"))
    seen = []

    def fake_measure(m, precision, engines):
        seen.append((precision, tuple(engines)))
        # fp32: onnxruntime measured fastest here, unlike the table's first choice
        return {"torch": 2.0, "onnxruntime": 0.5, "openvino": 1.5} if precision == "fp32" else {"torch": 0.4,
                                                                                                 "openvino": 0.6}

    assert table[0] != "onnxruntime"
    assert auto.calibrate(model, "fp32", measure=fake_measure) == "onnxruntime"
    assert seen == [("fp32", ("torch", "openvino", "onnxruntime"))]
    doc = json.loads(auto.choice_file().read_text())
    key = auto.choice_key(model, "fp32")
    assert doc[key]["engine"] == "onnxruntime" and doc[key]["encoder_s"]["openvino"] == 1.5
    assert auto.machine_id() in key and "|nanosam|256|fp32" in key
    assert auto.resolve(model, {}) == ("onnxruntime", {})
    # bf16 has its own entry: torch measured faster there, and takes the precision as dtype
    assert auto.calibrate(model, "bf16", measure=fake_measure) == "torch"
    assert auto.resolve(model, {"dtype": "bf16"}) == ("torch", {"dtype": "bf16"})
    assert auto.resolve(model, {"precision": "bf16"}) == ("torch", {"dtype": "bf16"})
    # another input size is another key: back to the table
    assert auto.resolve(swiftsam.build("nanosam-r18", input_size=512), {})[0] == table[0]
    # a recorded engine that is not installed here is not used: the table's fastest installed one is
    monkeypatch.setattr(auto, "installed", lambda engine: engine != "onnxruntime")
    assert auto.resolve(model, {})[0] == next(e for e in table if e != "onnxruntime")


def test_auto_calibrates_on_first_use_when_asked(monkeypatch):
    model = swiftsam.build("nanosam-r18", input_size=256)
    monkeypatch.setattr(auto, "installed", lambda engine: engine != "openvino")
    monkeypatch.setattr(auto, "measure_engines", lambda m, p, engines: {e: float(i + 1) for i, e in
                                                                         enumerate(reversed(engines))})
    monkeypatch.setenv(auto.CALIBRATE_ENV, "1")
    assert auto.choose(model, "fp32") == "onnxruntime"  # measured (torch, onnxruntime) reversed: 1 s for onnxruntime
    assert json.loads(auto.choice_file().read_text())[auto.choice_key(model, "fp32")]["engine"] == "onnxruntime"
    monkeypatch.setattr(auto, "measure_engines", lambda m, p, engines: {})
    with pytest.raises(EngineError, match="no installed engine runs"):
        auto.calibrate(model, "bf16")


def _row(impl, engine, precision, stage, ms, prompts=None):
    return {"model": "m", "implementation": impl, "engine": engine, "precision": precision, "input_size": 256,
            "stage": stage, "batch_size": 1, "prompts": prompts, "median_s": ms / 1e3, "p90_s": ms / 1e3,
            "min_s": ms / 1e3, "throughput": 1e3 / ms, "throughput_unit": "img/s", "peak_memory_mb": 1.0,
            "describe": "segment_anything eager" if impl == "reference" else engine}


def test_bench_ratios_in_the_same_precision_and_best_vs_best():
    from swiftsam.bench import best_vs_best, markdown, speedups, table

    rows = [_row("reference", "eager", "fp32", "encoder", 1000), _row("reference", "eager", "bf16", "encoder", 600),
            _row("swiftsam", "openvino", "fp32", "encoder", 400), _row("swiftsam", "openvino", "bf16", "encoder", 300),
            _row("swiftsam", "openvino", "int8", "encoder", 200), _row("swiftsam", "torch", "bf16", "encoder", 500)]
    s = {(r["engine"], r["precision"]): r for r in speedups(rows)}
    assert s[("openvino", "fp32")]["speedup_vs_reference"] == pytest.approx(2.5)
    assert s[("openvino", "bf16")]["speedup_vs_reference"] == pytest.approx(2.0)  # bf16 vs bf16, not vs fp32
    assert s[("openvino", "bf16")]["speedup_vs_reference_fp32"] == pytest.approx(1000 / 300)
    assert s[("openvino", "int8")]["speedup_vs_reference"] is None  # the reference has no int8
    best = best_vs_best(rows)
    assert len(best) == 1 and best[0]["swiftsam_engine"] == "openvino" and best[0]["swiftsam_precision"] == "int8"
    assert best[0]["reference_precision"] == "bf16" and best[0]["speedup"] == pytest.approx(3.0)
    doc = {"results": rows, "skipped": [], "speedups": speedups(rows), "best_vs_best": best}
    text = table(doc)
    assert "best vs best" in text and "openvino int8 200.0 ms vs reference bf16 600.0 ms = 3.00x" in text
    md = markdown(doc)
    assert "300.0 (2.00x)" in md  # openvino bf16 against the reference in bf16
    assert "200.0 (5.00x)" in md  # int8 against the reference in fp32
    assert "| m | 256 | encoder | 1 | openvino int8 | 200.0 | bf16 | 600.0 | 3.00x |" in md


@needs_openvino
def test_bench_runs_openvino_cells(small):
    from swiftsam.bench import BenchConfig, run_bench

    doc = run_bench(BenchConfig(models=["nanosam-r18"], engines=["openvino", "torch"], precisions=["fp32", "int8"],
                                input_sizes=[256], stages=["encoder"], warmup=0, iterations=1), progress=False)
    measured = {(r["engine"], r["precision"]) for r in doc["results"]}
    assert ("openvino", "fp32") in measured and ("torch", "fp32") in measured
    reasons = {(s["engine"], s["precision"]): s["reason"] for s in doc["skipped"]}
    assert "no int8 path" in reasons[("torch", "int8")]
    assert doc["machine"].get("openvino")


def test_cli_engine_options_for_openvino():
    import argparse

    from swiftsam.cli.common import engine_options

    def args(**kw):
        return argparse.Namespace(**{"engine": "openvino", "dtype": "fp32", "threads": None, "onnx_dir": None, **kw})

    assert engine_options(args(dtype="int8", threads=2, onnx_dir="d")) == {"precision": "int8", "threads": 2,
                                                                           "onnx_dir": "d"}
    with pytest.raises(InputError, match="fp16 is not an openvino precision"):
        engine_options(args(dtype="fp16"))
    with pytest.raises(InputError, match="int8 runs on --engine openvino"):
        engine_options(args(engine="torch", dtype="int8"))


@needs_openvino
def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    """``engine="auto"`` now converts to OpenVINO on first use: a SWIFTSAM_HOME that cannot be written says what to do
    (a file in the way stands in for a read-only folder, which root could still write)."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SWIFTSAM_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setattr(auto, "installed", lambda engine: True)
    model = swiftsam.build("nanosam-r18", input_size=256)
    assert auto.resolve(model, {})[0] == "openvino"
    with pytest.raises(EngineError, match="cannot write the OpenVINO cache .*set SWIFTSAM_HOME to a writable folder"):
        swiftsam.Predictor(model)
