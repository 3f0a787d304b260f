"""``swiftsam import-onnx``: an image encoder published as an ONNX graph (NanoSAM's) into a zoo checkpoint."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam.cli import main
from swiftsam.errors import CheckpointError, InputError
from swiftsam.modeling.encoders.resnet import ResNetSamEncoder
from swiftsam.zoo import save_checkpoint
from swiftsam.zoo.onnx_import import encoder_state_from_onnx, graph_input_size, import_onnx
from tests.conftest import have, randomize_, test_image

pytestmark = pytest.mark.skipif(not (have("onnx") and have("onnxruntime")), reason="needs onnx and onnxruntime")

SIZE = 64  # small input: the graph still holds every weight (the neck resizes to the 64 x 64 grid)


def _export(encoder: torch.nn.Module, path, fold: bool, size: int = SIZE, dynamic: bool = False) -> None:
    """As NanoSAM exported its encoder: eval mode, TorchScript exporter; ``fold``: constant folding, which
    folds every batch norm into the convolution before it (NanoSAM's file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder.eval(), (torch.zeros(1, 3, size, size),), str(path), input_names=["image"],
                          output_names=["image_embeddings"], opset_version=16, do_constant_folding=fold,
                          dynamo=False, dynamic_axes={"image": {2: "h", 3: "w"}} if dynamic else None)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random nanosam-r18 (batch-norm statistics randomised too), its checkpoint and its two exports."""
    folder = tmp_path_factory.mktemp("import_onnx")
    model = randomize_(swiftsam.build("nanosam-r18", input_size=SIZE), seed=11)
    save_checkpoint(model, folder / "source.pt")
    _export(model.image_encoder, folder / "folded.onnx", fold=True)
    _export(model.image_encoder, folder / "unfolded.onnx", fold=False)
    return model, folder


def _ops(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _ort(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def test_folded_graph_imports_and_matches_onnxruntime(source):
    model, folder = source
    assert "BatchNormalization" not in _ops(folder / "folded.onnx")  # the form NanoSAM's file has
    assert graph_input_size(folder / "folded.onnx") == SIZE
    ours = swiftsam.build("nanosam-r18", input_size=SIZE)
    report = import_onnx(ours, folder / "folded.onnx", decoder_from=folder / "source.pt")
    assert report["max_relative_difference"] <= 1e-5 and report["encoder_tensors"] == len(
        model.image_encoder.state_dict())
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = ours.image_encoder(x).numpy()
    np.testing.assert_allclose(got, _ort(folder / "folded.onnx", x), rtol=0, atol=1e-5 * np.abs(got).max())
    # folded batch norms come back as identity ones: the convolution holds the folded weight
    bn = ours.image_encoder.trunk.bn1
    assert torch.equal(bn.running_mean, torch.zeros(64)) and torch.equal(bn.running_var, torch.ones(64))
    assert not torch.equal(ours.image_encoder.trunk.conv1.weight, model.image_encoder.trunk.conv1.weight)
    for key in ("mask_decoder.iou_prediction_head.layers.0.weight", "image_encoder.pos_embedding",
                "image_encoder.proj.2.weight"):
        assert torch.equal(ours.state_dict()[key], model.state_dict()[key])


def test_unfolded_graph_gives_the_source_weights_exactly(source):
    model, folder = source
    assert "BatchNormalization" in _ops(folder / "unfolded.onnx")
    ours = swiftsam.build("nanosam-r18", input_size=SIZE)
    import_onnx(ours, folder / "unfolded.onnx", decoder_from=folder / "source.pt")
    theirs = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items() if "num_batches" not in k)


def test_cli_writes_a_checkpoint_that_load_and_the_predictor_run(source, tmp_path, capsys):
    model, folder = source
    out = tmp_path / "nanosam_r18.pt"
    assert main(["import-onnx", "nanosam-r18", str(folder / "folded.onnx"), "--out", str(out),
                 "--decoder-from", str(folder / "source.pt")]) == 0
    assert "max_relative_difference" in capsys.readouterr().out
    loaded = swiftsam.load("nanosam-r18", checkpoint=out)
    assert loaded.spec.input_size == SIZE  # recorded in the checkpoint
    image = test_image(96, 128)
    masks = []
    for m in (loaded, model):
        p = swiftsam.Predictor(m, engine="torch")
        p.set_image(image)
        logits, scores, _ = p.predict(box=np.array([20, 10, 100, 80]), multimask_output=True, return_logits=True)
        masks.append((logits, scores))
    np.testing.assert_allclose(masks[0][0], masks[1][0], atol=1e-3)
    np.testing.assert_allclose(masks[0][1], masks[1][1], atol=1e-4)


def test_graph_of_another_model_is_refused_with_a_clear_error(source, tmp_path, capsys):
    _, folder = source
    r34 = tmp_path / "r34.onnx"
    _export(swiftsam.build("nanosam-r34", input_size=SIZE).image_encoder, r34, fold=True)
    with pytest.raises(CheckpointError, match="has 42 convolutions, the encoder it is imported into has 26"):
        import_onnx(swiftsam.build("nanosam-r18", input_size=SIZE), r34, decoder_from=folder / "source.pt")
    # the same convolutions, other widths: the first misfit is named
    narrow = tmp_path / "narrow.onnx"
    _export(ResNetSamEncoder("resnet18", img_size=SIZE, neck_channels=128), narrow, fold=True)
    with pytest.raises(CheckpointError, match=r"weights of shape \(128, 512, 3, 3\) where up.0.weight has "
                                              r"\(256, 512, 3, 3\)"):
        encoder_state_from_onnx(swiftsam.build("nanosam-r18", input_size=SIZE).image_encoder, narrow, SIZE)
    # through the CLI: exit 2 and the message, no traceback, nothing written
    out = tmp_path / "x.pt"
    assert main(["import-onnx", "nanosam-r18", str(r34), "--out", str(out),
                 "--decoder-from", str(folder / "source.pt")]) == 2
    assert "swiftsam: error:" in capsys.readouterr().err and not out.exists()


def test_a_graph_tensor_without_a_place_is_an_error(source, tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    _, folder = source
    graph = onnx.load(str(folder / "folded.onnx"))
    extra = numpy_helper.from_array(np.ones((256, 64, 64), np.float32), "stray_weights")
    graph.graph.initializer.append(extra)
    out = graph.graph.output[0].name
    graph.graph.node.append(helper.make_node("Mul", [out, "stray_weights"], ["scaled"]))
    graph.graph.output[0].name = "scaled"
    path = tmp_path / "stray.onnx"
    onnx.save(graph, str(path))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) of the graph have no place in the model \(stray_weights"):
        encoder_state_from_onnx(swiftsam.build("nanosam-r18", input_size=SIZE).image_encoder, path, SIZE)


def test_bad_inputs_give_clear_errors(source, tmp_path, capsys):
    _, folder = source
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="cannot be read as an ONNX model"):
        graph_input_size(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="ONNX file not found"):
        graph_input_size(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="neither a checkpoint file nor a zoo model"):
        import_onnx(swiftsam.build("nanosam-r18", input_size=SIZE), folder / "folded.onnx", decoder_from="nothing")
    dynamic = tmp_path / "dynamic.onnx"
    _export(swiftsam.build("nanosam-r18", input_size=SIZE).image_encoder, dynamic, fold=True, dynamic=True)
    assert graph_input_size(dynamic) is None
    args = ["import-onnx", "nanosam-r18", str(dynamic), "--out", str(tmp_path / "d.pt"),
            "--decoder-from", str(folder / "source.pt")]
    assert main(args) == 2 and "pass the size it was trained at with --input-size" in capsys.readouterr().err
    assert main(args + ["--input-size", str(SIZE), "--no-check"]) == 0
    assert main(["import-onnx", "nanosam-r18", str(folder / "folded.onnx"), "--out", str(tmp_path / "e.pt"),
                 "--input-size", "128"]) == 2
    assert f"takes {SIZE} x {SIZE} images, not 128" in capsys.readouterr().err
