"""Quantization: PTQ (torch fake-quant and onnxruntime QDQ), QAT export, Q-TinySAM's restricted loader."""

from __future__ import annotations

import copy
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import swiftsam
from swiftsam.engines import TorchEngine
from swiftsam.errors import CheckpointError, InputError
from swiftsam.quant import calibration_images, preprocessed, quant_layers, quantize_torch
from swiftsam.quant import RangeObserver, affine_params
from swiftsam.quant import TinySamQuantConv2d, TinySamQuantLinear, TinySamQuantLinearPost, load_qtinysam
from tests.conftest import SHARED, randomize_, test_image

VAL = SHARED / "coco-mini" / "val2017"


def _inputs(model, n=3, seed=0):
    return [model.preprocess(test_image(200, 260, seed=seed + i))[0] for i in range(n)]


def test_observers_choose_ranges():
    obs = RangeObserver(sample_size=4096)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10000, generator=g)
    x[0] = 50.0  # one outlier
    obs.observe(x)
    assert obs.range("minmax") == (pytest.approx(float(x.min())), 50.0)
    lo, hi = obs.range("percentile", 99.9)
    assert 2.5 < hi < 5 and -5 < lo < -2.5  # the outlier is clipped away
    lo_mse, hi_mse = obs.range("mse")
    assert hi_mse < 50.0  # clipping the outlier lowers the error on the bulk of the values
    scale, zero = affine_params(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and -128 <= zero <= 127
    # zero is exactly representable
    assert float(torch.fake_quantize_per_tensor_affine(torch.zeros(1), scale, zero, -128, 127)) == 0.0
    with pytest.raises(InputError, match="unknown observer"):
        obs.range("magic")


def test_ptq_torch_quantizes_every_encoder_layer_and_stays_close():
    model = randomize_(swiftsam.build("nanosam-r18", input_size=256))
    x = _inputs(model)
    with torch.no_grad():
        ref = model.image_encoder(x[0])
    q = quantize_torch(copy.deepcopy(model), x, "percentile")
    layers = quant_layers(q.image_encoder)
    convs = [m for m in model.image_encoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert len(layers) == len(convs) > 20
    with torch.no_grad():
        out = q.image_encoder(x[0])
    rel = float((out - ref).pow(2).mean() / ref.var())
    assert 0 < rel < 0.02  # quantized (not identical) but close
    # weights are on the int8 grid of their per-channel scale
    layer = next(iter(layers.values()))
    wq = layer.quant_weight() / layer.w_scale.view(-1, *[1] * (layer.weight.ndim - 1))
    assert torch.allclose(wq, wq.round(), atol=1e-3) and wq.abs().max() <= 128


def test_w8a8_checkpoint_round_trips_through_load(tmp_path):
    model = randomize_(swiftsam.build("nanosam-r18", input_size=256))
    q = quantize_torch(model, _inputs(model, 2), "minmax")
    torch.save(q.state_dict(), tmp_path / "w8a8.pt")
    back = swiftsam.load("nanosam-r18", checkpoint=tmp_path / "w8a8.pt", input_size=256)
    assert len(quant_layers(back.image_encoder)) == len(quant_layers(q.image_encoder))
    x = _inputs(model, 1, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(back.image_encoder(x), q.image_encoder(x))
        # the torch engine folds batch norms, but never into a quantized conv (its scales fit the unfolded weights)
        engine = TorchEngine(back)
        assert torch.allclose(engine.encode(x).embedding, back.image_encoder(x), atol=1e-5)


def test_onnxruntime_int8_encoder_runs_and_agrees(tmp_path):
    pytest.importorskip("onnxruntime")
    from swiftsam.engines import OrtEngine
    from swiftsam.quant.onnx_int8 import count_qdq, quantize_onnx

    model = randomize_(swiftsam.build("nanosam-r18", input_size=256))
    files = calibration_images(VAL, 4)
    manifest = quantize_onnx(model, tmp_path, preprocessed(model, files))
    counts = count_qdq(tmp_path / "encoder.onnx")
    assert counts["QuantizeLinear"] > 20 and counts["int8_initializers"] > 20
    assert manifest["quantization"]["calibration_images"] == 4
    int8 = OrtEngine(model, onnx_dir=tmp_path)
    x = _inputs(model, 1)[0]
    with torch.no_grad():
        ref = model.image_encoder(x)
    out = int8.encode(x).embedding
    rel = float((out - ref).pow(2).mean() / ref.var())
    assert 0 < rel < 0.05
    assert count_qdq(tmp_path / "encoder.fp32.onnx")["QuantizeLinear"] == 0


def test_quantize_cli_ptq_torch_and_qat_exports_onnx(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import json

    import onnxruntime as ort

    from swiftsam.cli import main

    common = ["nanosam-r18", "--checkpoint", "random", "--input-size", "128", "--calib", str(VAL), "--calib-images", "2"]
    assert main(["quantize", *common, "--backend", "torch", "--observer", "mse", "--out", str(tmp_path / "t"),
                 "--val-images", str(VAL), "--val-annotations", str(VAL.parent / "annotations/instances_val2017.json"),
                 "--val-count", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantized_layers"] > 20 and (tmp_path / "t" / "model-w8a8.pt").is_file()
    assert summary["agreement"]["objects"] > 0 and 0 <= summary["agreement"]["miou_vs_float"] <= 1
    # QAT: a few fake-quantized steps on CPU, then a QDQ encoder that onnxruntime runs
    assert main(["quantize", *common, "--method", "qat", "--qat-steps", "2", "--qat-batch-size", "1",
                 "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["QuantizeLinear"] > 20
    session = ort.InferenceSession(summary["onnx_dir"] + "/encoder.onnx", providers=["CPUExecutionProvider"])
    emb = session.run(None, {"image": np.zeros((1, 3, 128, 128), np.float32)})[0]
    assert emb.shape == (1, 256, 64, 64) and np.isfinite(emb).all()
    assert main(["quantize", "nanosam-r18", "--calib", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "calibration folder not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------- Q-TinySAM
@torch.no_grad()
def test_tinysam_quant_layers_follow_the_published_arithmetic():
    lin = nn.Linear(2, 1, bias=False)
    lin.weight.data = torch.tensor([[0.26, -0.74]])
    t = {"w_interval": torch.tensor(0.1).view(1, 1, 1, 1), "a_interval": torch.tensor([[0.1], [0.5]]),
         "n_V": torch.tensor(1), "n_H": torch.tensor(1), "n_a": torch.tensor(2), "crb_rows": torch.tensor(1),
         "crb_cols": torch.tensor(2), "crb_acts": torch.tensor(1)}
    q = TinySamQuantLinear.from_float(lin, t, {"a_bit": 8})
    # weights -> [0.3, -0.7]; inputs chunk-wise: 0.33 -> 0.3 (step 0.1), 1.27 -> 1.5 (step 0.5)
    assert float(q(torch.tensor([[0.33, 1.27]]))) == pytest.approx(0.3 * 0.3 + 1.5 * -0.7)
    post = TinySamQuantLinearPost.from_float(lin, {**t, "a_neg_interval": torch.tensor(0.01)}, {"a_bit": 8})
    # negative inputs use their own (finer) interval: -0.033 -> -0.03; positive 1.27 -> 1.5
    assert float(post(torch.tensor([[-0.033, 1.27]]))) == pytest.approx(0.3 * -0.03 + 1.5 * -0.7)
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(0.5)
    qc = TinySamQuantConv2d.from_float(conv, {"w_interval": torch.tensor(0.2), "a_interval": torch.tensor(0.25),
                                              "a_bias": torch.tensor(1.0)}, {"a_bit": 8})
    # weight 0.5 -> 0.4; input 1.6 -> 1 + round(0.6 / 0.25) * 0.25 = 1.5
    assert float(qc(torch.full((1, 1, 1, 1), 1.6))) == pytest.approx(0.4 * 1.5)


def _craft_qtinysam(path, monkeypatch, seed=0):
    """A file shaped like tinysam_w8a8.pth: our tinysam re-labelled with TinySAM's class names, its
    encoder linears / convs as quantization_layer classes with intervals, pickled whole by torch.save."""
    model = randomize_(swiftsam.build("tinysam"), seed)
    mods: dict[str, types.ModuleType] = {}
    made: dict[tuple[type, str, str], type] = {}

    def fake(cls, module, name, extra=None):
        key = (cls, module, name)
        if key not in made:
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # parent packages too, so that pickle can import the path
                path_i = ".".join(parts[:i])
                if path_i not in mods:
                    mods[path_i] = types.ModuleType(path_i)
                    monkeypatch.setitem(sys.modules, path_i, mods[path_i])
            mod = mods[module]
            made[key] = type(name, (cls,), dict(extra or {}, __module__=module, __qualname__=name))
            setattr(mod, name, made[key])
        return made[key]

    where = {"Sam": "sam", "MaskDecoder": "mask_decoder", "MLP": "mask_decoder", "PromptEncoder": "prompt_encoder",
             "PositionEmbeddingRandom": "prompt_encoder", "TwoWayTransformer": "transformer",
             "TwoWayAttentionBlock": "transformer", "MLPBlock": "common", "LayerNorm2d": "common"}
    quantized = 0
    for name, m in list(model.named_modules()):
        cls = type(m)
        if name.startswith("image_encoder.layers.1") and (cls is nn.Linear or (cls is nn.Conv2d and m.groups == 1)):
            w = m.weight.detach()
            if cls is nn.Linear:
                kind = "InferQuantLinearPost" if name.endswith("fc2") else "InferQuantLinear"
                m.register_buffer("w_interval", (w.abs().amax(dim=1).view(-1, 1, 1, 1) / 127).clamp(min=1e-6))
                m.register_buffer("a_interval", torch.full((2, 1), 0.05))
                out_f, in_f = w.shape
                for k, v in {"n_V": out_f, "n_H": 1, "n_a": 2, "crb_rows": 1, "crb_cols": in_f, "crb_acts": in_f // 2}.items():
                    m.register_buffer(k, torch.tensor(v, dtype=torch.int32))
                if kind.endswith("Post"):
                    m.register_buffer("a_neg_interval", torch.tensor(0.17 / 128))
            else:
                kind = "InferQuantConv2d"
                m.register_buffer("w_interval", w.abs().amax(dim=(1, 2, 3)).view(-1, 1, 1, 1) / 127)
                m.register_buffer("a_interval", torch.tensor(0.05))
                m.register_buffer("a_bias", torch.tensor(0.0))
                m.register_buffer("n_V", torch.tensor(1, dtype=torch.int32))
                m.register_buffer("n_H", torch.tensor(1, dtype=torch.int32))
            m.mode, m.w_bit, m.a_bit = "quant_forward", 8, 8
            m.__class__ = fake(cls, "quantization_layer.layers", kind)
            quantized += 1
        elif cls.__name__ == "MLPStack":  # the hypernetwork heads: a plain ModuleList in TinySAM's code
            m.__class__ = nn.ModuleList
        elif cls.__module__.startswith("swiftsam"):
            module = where.get(cls.__name__, "tiny_vit_sam")
            if cls.__name__ == "Attention" and "image_encoder" not in name:
                module = "transformer"
            m.__class__ = fake(cls, f"tinysam.modeling.{module}", cls.__name__)
    attn = model.image_encoder.layers[1].blocks[0].attn  # a matmul quantizer the released code never calls
    mm = nn.Module()
    mm.register_buffer("A_interval", torch.tensor(0.1))
    mm.mode = "quant_forward"
    mm.__class__ = fake(nn.Module, "quantization_layer.layers", "InferQuantMatMul")
    attn.matmul1 = mm
    del model.contract  # ours (the spec with it), not TinySAM's; their Sam keeps an image_format string instead
    del model.image_encoder.feature_info  # ours too (the encoder's output layout)
    model.image_format = "RGB"
    torch.save(model, path)
    return quantized


def test_qtinysam_loads_without_their_code_and_keeps_quantization(tmp_path, monkeypatch):
    path = tmp_path / "tinysam_w8a8.pth"
    with monkeypatch.context() as m:
        quantized = _craft_qtinysam(path, m)
    assert not any(k.startswith(("tinysam", "quantization_layer")) for k in sys.modules)
    model = load_qtinysam(path)
    assert model.quantization["quantized_layers"] == quantized > 5
    assert model.quantization["ignored"] == ["image_encoder.layers.1.blocks.0.attn.matmul1"]
    float_model = randomize_(swiftsam.build("tinysam"), 0)
    for k, v in float_model.mask_decoder.state_dict().items():  # float parts carried over exactly
        assert torch.equal(model.mask_decoder.state_dict()[k], v)
    x = float_model.preprocess(test_image(96, 128))[0]
    with torch.no_grad():
        a, b = float_model.image_encoder(x), model.image_encoder(x)
    rel = float((a - b).pow(2).mean() / a.var())
    assert 0 < rel < 0.1  # the quantized layers run quantized, and stay close to the float model
    # through the zoo: swiftsam.load("tinysam-w8a8", checkpoint=...) uses the same restricted loader
    again = swiftsam.load("q-tinysam", checkpoint=path)
    assert again.multimask_only and again.quantization["quantized_layers"] == quantized


def test_qtinysam_loader_refuses_unexpected_globals(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('pwned')",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused .*evil.pth.*eval"):
        load_qtinysam(evil)
    assert not marker.exists()
    # an unknown class under a TinySAM-looking module is refused too
    crafted = tmp_path / "unknown.pth"
    data = b"\x80\x02ctinysam.modeling.sam\nBackdoor\nq\x00)\x81q\x01."
    torch.save({"x": torch.zeros(1)}, crafted)
    import zipfile

    with zipfile.ZipFile(crafted) as z:
        names = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    names[pkl] = data
    with zipfile.ZipFile(crafted, "w") as z:
        for n, b in names.items():
            z.writestr(n, b)
    with pytest.raises(CheckpointError, match="Backdoor"):
        load_qtinysam(crafted)
    with pytest.raises(CheckpointError, match="not found"):
        load_qtinysam(tmp_path / "missing.pth")
