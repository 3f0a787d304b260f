"""Engines: onnxruntime against torch for every family, exported graphs, engine choice and errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import swiftsam
from swiftsam import Predictor
from swiftsam.engines import CPU_FASTEST, OrtEngine, TorchEngine, auto_engine, get_engine
from swiftsam.engines.optimize import count_foldable, fold_batch_norms
from swiftsam.errors import EngineError
from swiftsam.export.onnx import OPSET, banned_ops, check_graph, export_onnx, read_manifest
from tests.conftest import randomize_, test_image

# one member per family, reduced in depth where the full model is slow to export on 2 cores
FAMILIES = [
    ("sam-vit-b", {"depth": 2}),
    ("mobilesam", {}),
    ("efficientvit-sam-l0", {}),
    ("efficientvit-sam-xl0", {"depth_scale": 0.34}),
    ("nanosam-r18", {}),
]


def mask_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def random_model(name: str, seed: int = 0, **kw) -> swiftsam.Sam:
    return randomize_(swiftsam.build(name, **kw), seed).eval()


def flat_prompts(seed: int = 3):
    """Four prompts of 4 flat points each: clicks + padding, a box, clicks + a box, a box + mask input."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(4, 4, 2, generator=g) * 1000
    labels = torch.tensor([[1, 0, 1, -1], [2, 3, -1, -1], [1, 0, 2, 3], [1, 2, 3, -1]], dtype=torch.float32)
    mask = torch.randn(4, 1, 256, 256, generator=g)
    has = torch.tensor([0.0, 0.0, 0.0, 1.0])
    return coords, labels, mask, has


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def family(request, tmp_path_factory):
    name, kw = request.param
    model = random_model(name, **kw)
    folder = tmp_path_factory.mktemp(name)
    export_onnx(model, folder)
    return model, folder


def test_exported_graphs_are_valid_opset17_and_free_of_banned_ops(family):
    import onnx

    model, folder = family
    manifest = read_manifest(folder)
    assert set(manifest["files"]) == {"encoder", "decoder", "sam_decoder"}
    assert manifest["spec"]["input_size"] == model.spec.input_size
    for info in manifest["files"].values():
        path = folder / info["file"]
        onnx.checker.check_model(str(path))
        graph = onnx.load(str(path), load_external_data=False)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
        assert banned_ops(path) == {}
        assert [i.name for i in graph.graph.input] == info["inputs"]
        assert [o.name for o in graph.graph.output] == info["outputs"]


def test_onnxruntime_matches_torch(family):
    model, folder = family
    torch_engine, ort_engine = TorchEngine(model), OrtEngine(model, onnx_dir=folder)
    s = model.spec.input_size
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))  # batch 2: the batch axis is dynamic
    emb_t, emb_o = torch_engine.encode(x).embedding, ort_engine.encode(x).embedding
    assert emb_o.shape == emb_t.shape == (2, 256, 64, 64)
    assert (emb_o - emb_t).abs().max() < 1e-3

    prompts = flat_prompts()
    low_t, iou_t = torch_engine.decode(emb_t[:1], *prompts)
    low_o, iou_o = ort_engine.decode(emb_t[:1], *prompts)
    assert low_o.shape == low_t.shape == (4, 4, 256, 256)
    assert (iou_o - iou_t).abs().max() < 1e-3
    for k in range(4):
        for m in range(4):
            assert mask_iou(low_o[k, m] > 0, low_t[k, m] > 0) >= 0.99
    # a different number of points per call, and one embedding per prompt
    low2_t, _ = torch_engine.decode(emb_t, prompts[0][:2, :3], prompts[1][:2, :3], prompts[2][:2], prompts[3][:2])
    low2_o, _ = ort_engine.decode(emb_t, prompts[0][:2, :3], prompts[1][:2, :3], prompts[2][:2], prompts[3][:2])
    assert all(mask_iou(low2_o[k, m] > 0, low2_t[k, m] > 0) >= 0.99 for k in range(2) for m in range(4))


def test_predictor_gives_the_same_masks_on_every_engine(family):
    model, folder = family
    image = test_image(300, 420, seed=2)
    preds = [Predictor(model, engine="torch"), Predictor(model, engine="onnxruntime", onnx_dir=folder)]
    for p in preds:
        p.set_image(image)
    prompts = [
        dict(point_coords=np.array([[200.0, 150.0], [50.0, 60.0]]), point_labels=np.array([1, 0])),
        dict(box=np.array([50.0, 40.0, 300.0, 260.0]), multimask_output=False),
    ]
    for prompt in prompts:
        (m_t, s_t, _), (m_o, s_o, _) = (p.predict(**prompt) for p in preds)
        assert np.abs(s_t - s_o).max() < 1e-3
        assert all(mask_iou(a, b) >= 0.99 for a, b in zip(m_t, m_o))


def run_sam_graph(path, emb, coords, labels, mask, has, size):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels, "mask_input": mask,
            "has_mask_input": has, "orig_im_size": size}
    return session.run(None, {k: np.asarray(v, np.float32) for k, v in feed.items()})


def export_reference_sam_decoder(ref, path, single: bool, orig_size: tuple[int, int]) -> None:
    """segment_anything's SamOnnxModel, exported as its script does (TorchScript tracer).

    With this torch the tracer bakes the crop of the example ``orig_im_size`` into the graph, so the
    reference graph is exported for each image size it is compared at (ours is checked across sizes).
    """
    import warnings

    from segment_anything.utils.onnx import SamOnnxModel

    example = (torch.zeros(1, 256, 64, 64), torch.zeros(1, 2, 2), torch.tensor([[1.0, -1.0]]),
               torch.zeros(1, 1, 256, 256), torch.tensor([0.0]), torch.tensor([float(v) for v in orig_size]))
    names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SamOnnxModel(ref, return_single_mask=single), example, str(path), input_names=names,
                          output_names=["masks", "iou_predictions", "low_res_masks"], opset_version=OPSET,
                          dynamic_axes={"point_coords": {1: "n"}, "point_labels": {1: "n"}}, dynamo=False)


@pytest.mark.parametrize("single", [False, True], ids=["all-masks", "single-mask"])
def test_sam_interface_decoder_matches_reference_onnx_export(tmp_path, single):
    """Same weights, same inputs: our SAM-interface graph against segment_anything's own ONNX export."""
    from swiftsam.transforms import postprocess_masks
    from swiftsam.zoo.checkpoint import load_checkpoint
    from tests.reference_models import reference_sam_vit

    ref = randomize_(reference_sam_vit("b", depth=1), 4).eval()
    ours = swiftsam.build("sam-vit-b", depth=1)
    load_checkpoint(ours, swiftsam.get_entry("sam-vit-b"), ref.state_dict(), "reference")
    export_onnx(ours, tmp_path / "ours", ["sam_decoder"], sam_single_mask=single)
    assert banned_ops(tmp_path / "ours" / "sam_decoder.onnx") == {}

    g = torch.Generator().manual_seed(5)
    emb = torch.randn(1, 256, 64, 64, generator=g).numpy()
    cases = [  # (flat points, labels, has_mask, original size): clicks + padding, a box, clicks + box + mask
        ([[300.0, 200.0], [0.0, 0.0]], [1, -1], 0.0, (480, 640)),
        ([[100.0, 50.0], [600.0, 700.0]], [2, 3], 0.0, (1200, 900)),
        ([[350.0, 300.0], [500.0, 310.0], [100.0, 50.0], [600.0, 700.0]], [1, 0, 2, 3], 1.0, (333, 1000)),
    ]
    for k, (coords, labels, has, (h, w)) in enumerate(cases):
        inputs = (emb, np.array([coords]), np.array([labels]), torch.randn(1, 1, 256, 256, generator=g).numpy(),
                  np.array([has]), np.array([h, w]))
        export_reference_sam_decoder(ref, tmp_path / f"ref{k}.onnx", single, (h, w))
        if k == 0:  # the reference graph has the ops TensorRT trips on; ours has none (asserted above)
            assert {"OneHot", "Tile"} <= set(banned_ops(tmp_path / "ref0.onnx"))
        masks_o, iou_o, low_o = run_sam_graph(tmp_path / "ours" / "sam_decoder.onnx", *inputs)
        masks_r, iou_r, low_r = run_sam_graph(tmp_path / f"ref{k}.onnx", *inputs)
        assert masks_o.shape == masks_r.shape == (1, 1 if single else 4, h, w)
        assert np.abs(iou_o - iou_r).max() < 1e-4
        assert np.abs(low_o - low_r).max() < 1e-3
        assert all(mask_iou(a > 0, b > 0) >= 0.99 for a, b in zip(masks_o[0], masks_r[0]))
        # and the graph's own upscaling is the Predictor's, at every size (one graph for all of them)
        ours_torch = postprocess_masks(torch.from_numpy(low_o), (h, w), 1024).numpy()
        assert np.abs(masks_o - ours_torch).max() < 1e-3


def test_banned_op_scan_rejects_tile_and_onehot(tmp_path):
    class Repeats(torch.nn.Module):
        def forward(self, x, n):
            return x.repeat(n.shape[0], 1), torch.nn.functional.one_hot(n, 4)

    path = tmp_path / "bad.onnx"
    torch.onnx.export(Repeats(), (torch.ones(1, 3), torch.tensor([1, 2])), str(path), opset_version=OPSET, input_names=["x", "n"],
                      dynamo=False, dynamic_axes={"n": {0: "k"}})
    assert set(banned_ops(path)) >= {"Tile", "OneHot"}
    with pytest.raises(EngineError, match="break TensorRT"):
        check_graph(path)


def test_onnxruntime_engine_exports_once_and_reuses_the_cache(swiftsam_home):
    model = random_model("nanosam-r18", input_size=256)
    first = OrtEngine(model)
    mtime = (first.folder / "encoder.onnx").stat().st_mtime_ns
    second = OrtEngine(model)
    assert second.folder == first.folder and (second.folder / "encoder.onnx").stat().st_mtime_ns == mtime
    randomize_(model, seed=1)  # new weights: a new export, never a stale graph
    assert OrtEngine(model).folder != first.folder


def test_torch_engine_options_stay_close_to_fp32():
    model = random_model("nanosam-r18", input_size=256)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    ref = TorchEngine(model, channels_last=False).encode(x).embedding
    assert (TorchEngine(model, channels_last=True).encode(x).embedding - ref).abs().max() < 1e-4
    bf16 = TorchEngine(model, dtype="bf16").encode(x).embedding
    assert bf16.dtype == torch.float32
    assert (bf16 - ref).abs().max() < 0.1 * ref.abs().max()


def test_channels_last_default_follows_the_measured_table(monkeypatch):
    from swiftsam.cli import build_parser
    from swiftsam.engines import measured

    model = random_model("nanosam-r18", input_size=256)  # family nanosam
    monkeypatch.setattr(measured, "CHANNELS_LAST", {("cpu", "nanosam", "fp32"): True, ("cpu", "nanosam", "bf16"): True,
                                                ("cpu", "nanosam-r18", "bf16"): False, ("cuda", "nanosam", "fp16"): True})
    assert TorchEngine(model).channels_last is True
    assert TorchEngine(model, dtype="bf16").channels_last is False  # the zoo name's row wins over its family's
    assert TorchEngine(model, dtype="fp16").channels_last is False  # measured on CUDA only: NCHW
    assert TorchEngine(model, channels_last=False).channels_last is False  # the caller's choice wins
    assert "channels_last" in TorchEngine(model).describe()
    parse = build_parser().parse_args
    assert [parse(["bench", *flag]).channels_last for flag in ([], ["--channels-last"], ["--no-channels-last"])] == [
        None, True, False]


@pytest.mark.parametrize("name,kw", [("mobilesam", {}), ("efficientvit-sam-l0", {}), ("nanosam-r18", {"input_size": 256})])
def test_folding_batch_norms_is_exact_and_leaves_the_model_alone(name, kw):
    model = random_model(name, **kw)
    encoder = model.image_encoder
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    assert count_foldable(encoder) == n_bn > 0  # every batch norm of these encoders follows a conv
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    folded = fold_batch_norms(encoder)
    assert count_foldable(folded) == 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    s = model.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = encoder(x)
        assert (folded(x) - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
    engine = TorchEngine(model)
    assert engine.folded_bn and "folded_bn" in engine.describe()
    assert not TorchEngine(model, fold_bn=False).folded_bn
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(encoder.train())


def test_folding_skips_what_it_cannot_fold():
    vit = random_model("sam-vit-b", depth=1).image_encoder
    assert count_foldable(vit) == 0 and fold_batch_norms(vit) is vit
    lone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    assert count_foldable(lone) == 0  # a batch norm after an activation is not a foldable pair


def test_engine_choice_and_errors(monkeypatch):
    model = random_model("mobilesam")
    assert auto_engine(model) == CPU_FASTEST["tinyvit"]
    assert isinstance(get_engine("torch", model), TorchEngine)
    with pytest.raises(EngineError, match="unknown engine 'jax'"):
        get_engine("jax", model)
    with pytest.raises(EngineError, match="has no option threads"):
        get_engine("torch", model, threads=2)
    with pytest.raises(EngineError, match="dtype must be one of"):
        get_engine("torch", model, dtype="fp8")
    with pytest.raises(EngineError, match="cuda_graphs needs"):
        get_engine("torch", model, cuda_graphs=True)
    with pytest.raises(EngineError, match="no CUDAExecutionProvider"):
        get_engine("onnxruntime", model, provider="cuda")
    with pytest.raises(EngineError, match="pip install tensorrt|needs a CUDA GPU"):
        get_engine("tensorrt", model)
    with pytest.raises(EngineError, match="not mobilesam"):
        folder = OrtEngine(random_model("nanosam-r18", input_size=256)).folder
        OrtEngine(model, onnx_dir=folder)
    with pytest.raises(EngineError, match="missing or unreadable"):
        OrtEngine(model, onnx_dir="/nonexistent")
