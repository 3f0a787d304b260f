"""``swiftsam export MODEL --format anylabeling``: the exported pair run as X-AnyLabeling's loaders run them
(onnxruntime, their inputs and output positions) matches the Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import swiftsam
from swiftsam.cli import main
from swiftsam.errors import EngineError
from swiftsam.export.anylabeling import CANVAS, SAM1_TYPE, SAM2_TYPE, export_anylabeling, tool_type
from swiftsam.predictor import Predictor
from swiftsam.transforms import preprocess_square, to_prompt_frame

from .conftest import randomize_, test_image

ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum())


def sessions(folder, config):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return tuple(ort.InferenceSession(str(folder / config[k]), opts, providers=["CPUExecutionProvider"])
                 for k in ("encoder_model_path", "decoder_model_path"))


@pytest.fixture(scope="module")
def sam1(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_(swiftsam.build("nanosam-r18", input_size=256)).eval()
    folder = tmp_path_factory.mktemp("anylabeling-sam1")
    config = export_anylabeling(model, folder)
    return model, folder, config


def sam1_decode(dec, embedding, coords, labels, orig_size, pad=True):
    """What the segment_anything loader feeds: prompts plus a padding point (which SAM adds to clicks only),
    no mask input."""
    if pad:
        coords, labels = np.concatenate([coords, [[0.0, 0.0]]]), np.concatenate([labels, [-1]])
    coords, labels = coords[None].astype(np.float32), labels[None].astype(np.float32)
    return dec.run(None, {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
                          "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                          "has_mask_input": np.zeros(1, np.float32),
                          "orig_im_size": np.array(orig_size, np.float32)})


def test_sam1_config_names_the_graphs_and_the_loader_keys(sam1):
    model, folder, config = sam1
    written = yaml.safe_load((folder / f"{config['name']}.yaml").read_text())
    assert written == config and written["type"] == SAM1_TYPE
    # the keys X-AnyLabeling's segment_anything model reads (required + read in __init__)
    for key in ("type", "name", "display_name", "encoder_model_path", "decoder_model_path", "input_size", "max_width",
                "max_height"):
        assert key in written
    assert (folder / written["encoder_model_path"]).is_file() and (folder / written["decoder_model_path"]).is_file()
    assert (written["max_height"], written["max_width"]) == CANVAS
    assert not (folder / "manifest.json").exists()  # not a swiftsam ONNX folder: its graphs have other inputs


@pytest.mark.parametrize("h,w", [(240, 320), (300, 130)])
def test_sam1_raw_image_graphs_match_the_predictor(sam1, h, w):
    model, folder, config = sam1
    enc, dec = sessions(folder, config)
    image = test_image(h, w)
    assert enc.get_inputs()[0].type == "tensor(float)" and len(enc.get_inputs()[0].shape) == 3
    embedding = enc.run(None, {enc.get_inputs()[0].name: image.astype(np.float32)})[0]
    predictor = Predictor(model, engine="torch")
    predictor.set_image(image)
    # resize (PIL's antialiased bilinear, rebuilt in the graph) + normalise + pad inside: the same embedding
    np.testing.assert_allclose(embedding, predictor.get_image_embedding().numpy(), atol=2e-3)
    point = np.array([[w * 0.45, h * 0.4]])
    logits, scores, _ = predictor.predict(point, np.array([1]), multimask_output=True, return_logits=True)
    masks, iou_pred, _ = sam1_decode(dec, embedding, to_prompt_frame(point, (h, w), 1024), np.array([1]), (h, w))
    assert masks.shape == (1, 1, h, w)  # one click + padding: SAM's rule picks the best multimask output
    best = int(np.argmax(scores))
    np.testing.assert_allclose(masks[0, 0], logits[best], atol=2e-3)
    assert iou_pred[0, 0] == pytest.approx(scores[best], abs=1e-4)
    box = np.array([w * 0.2, h * 0.2, w * 0.7, h * 0.8])
    logits, scores, _ = predictor.predict(box=box, multimask_output=True, return_logits=True)
    masks, _, _ = sam1_decode(dec, embedding, to_prompt_frame(box.reshape(2, 2), (h, w), 1024), np.array([2, 3]),
                              (h, w), pad=False)  # as SAM's predictor: a box gets no padding point; 2 points: best of 3
    np.testing.assert_allclose(masks[0, 0], logits[int(np.argmax(scores))], atol=2e-3)


def test_sam1_through_the_loaders_canvas_matches_the_predictor(sam1):
    """The segment_anything loader scales the image into its 684 x 1024 canvas (cv2, no antialiasing), maps
    prompts with the same scale and warps the canvas-sized masks back."""
    model, folder, config = sam1
    enc, dec = sessions(folder, config)
    h, w = 342, 512  # the canvas' aspect: no black border (which the tool normalises as image content)
    image = test_image(h, w, seed=1)
    scale = min(CANVAS[0] / h, CANVAS[1] / w)
    forward = np.array([[scale, 0, 0], [0, scale, 0], [0, 0, 1.0]])
    canvas = cv2.warpAffine(image, forward[:2], (CANVAS[1], CANVAS[0]), flags=cv2.INTER_LINEAR)
    embedding = enc.run(None, {enc.get_inputs()[0].name: canvas.astype(np.float32)})[0]
    predictor = Predictor(model, engine="torch")
    predictor.set_image(image)
    point = np.array([[w * 0.5, h * 0.5]])
    masks, _, _ = sam1_decode(dec, embedding, point * scale, np.array([1]), CANVAS)
    back = cv2.warpAffine(masks[0, 0], np.linalg.inv(forward)[:2], (w, h), flags=cv2.INTER_LINEAR)
    logits, scores, _ = predictor.predict(point, np.array([1]), multimask_output=True, return_logits=True)
    assert iou(back > 0, logits[int(np.argmax(scores))] > 0) >= 0.9


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    from swiftsam.modeling.sam2 import build_sam2

    torch.manual_seed(0)
    model = randomize_(build_sam2("tiny", depth=(1, 1, 1, 1), input_size=128)).eval()
    folder = tmp_path_factory.mktemp("anylabeling-sam2")
    return model, folder, export_anylabeling(model, folder)


def test_sam2_pair_matches_the_predictor_as_the_loader_runs_it(sam2):
    model, folder, config = sam2
    assert config["type"] == SAM2_TYPE and "input_size" not in config
    assert yaml.safe_load((folder / f"{config['name']}.yaml").read_text()) == config
    enc, dec = sessions(folder, config)
    s = model.spec.input_size
    assert enc.get_inputs()[0].shape == [1, 3, s, s]  # the loader reads its resize target from this static shape
    image = test_image(150, 230, seed=2)
    h, w = image.shape[:2]
    predictor = Predictor(model, engine="torch")
    predictor.set_image(image)
    # the graph on our own preprocessing: the Predictor's features exactly, in the loader's output order
    hr0, hr1, embed = enc.run(None, {"image": preprocess_square(image, model.spec).numpy()})
    features = predictor.get_image_features()
    np.testing.assert_allclose(embed, features.embedding.numpy(), atol=1e-3)
    np.testing.assert_allclose(hr0, features.high_res[0].numpy(), atol=1e-3)
    point = np.array([[w * 0.4, h * 0.6]])
    logits, scores, _ = predictor.predict(point, np.array([1]), multimask_output=True, return_logits=True)

    def decode(levels):  # the loader: positional inputs, points in the encoder frame, no mask input
        coords = (point / [w, h] * s)[None].astype(np.float32)
        inputs = (*levels, coords, np.array([[1.0]], np.float32), np.zeros((1, 1, s // 4, s // 4), np.float32),
                  np.zeros(1, np.float32))
        masks, iou_pred = dec.run(None, {i.name: v for i, v in zip(dec.get_inputs(), inputs)})
        best = int(np.argmax(iou_pred.squeeze()))
        return cv2.resize(masks[0][best], (w, h)), best, iou_pred

    upscaled, best, iou_pred = decode((embed, hr0, hr1))
    assert best == int(np.argmax(scores))
    np.testing.assert_allclose(iou_pred[0], scores, atol=1e-4)
    np.testing.assert_allclose(upscaled, logits[best], atol=2e-3)
    # the loader's own preprocessing (cv2.resize without antialiasing, ImageNet mean / std)
    loader_input = (cv2.resize(image, (s, s)) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    levels = enc.run(None, {"image": loader_input.transpose(2, 0, 1)[None].astype(np.float32)})
    upscaled, _, _ = decode((levels[2], levels[0], levels[1]))
    assert iou(upscaled > 0, logits[best] > 0) >= 0.9


def test_models_without_a_tool_interface_are_refused():
    from swiftsam.modeling.contract import FeatureInfo, ModelContract

    class Fake:
        zoo_name = "fake"
        contract = ModelContract()
        training = False

    fake = Fake()
    assert tool_type(fake) == SAM1_TYPE
    fake.contract = ModelContract(mask_input_size=(128, 128))
    with pytest.raises(EngineError, match="assumes SAM's 1024 and 256 x 256"):
        tool_type(fake)
    fake.contract = ModelContract(features=(FeatureInfo("image_embeddings", 256, 64), FeatureInfo("extra", 32, 256)))
    with pytest.raises(EngineError, match="has no AnyLabeling export.*--format onnx"):
        tool_type(fake)


def test_cli_writes_the_anylabeling_folder_and_refuses_bad_options(tmp_path, capsys):
    out = tmp_path / "al"
    assert main(["export", "swiftsam-r18", "--input-size", "256", "--format", "anylabeling", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load((out / "swiftsam-swiftsam-r18-256.yaml").read_text())
    assert config["type"] == SAM1_TYPE and str(out / config["encoder_model_path"]) in printed
    for args, message in (
        (["--parts", "encoder"], "--parts does not apply to --format anylabeling"),
        (["--sam-single-mask"], "--sam-single-mask does not apply"),
        (["--precision", "fp16"], "ONNX graphs are exported in fp32"),
        (["--name", "a/b"], "must be a plain file name"),
    ):
        assert main(["export", "swiftsam-r18", "--input-size", "256", "--format", "anylabeling", "--out",
                     str(tmp_path / "bad"), *args]) == 2
        assert message in capsys.readouterr().err
        assert not list((tmp_path / "bad").glob("*.onnx"))
