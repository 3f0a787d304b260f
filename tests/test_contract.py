"""The model contract (issue 18): one frozen record of what runs a model besides its weights, saved with
checkpoints, embedding files and export manifests; feature layouts and stages derived from it, so nothing
assumes SAM 1's 256 x 64 x 64 embedding; a Predictor that runs from an export folder alone."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam import ModelContract, Predictor
from swiftsam.errors import EngineError
from swiftsam.modeling.contract import FeatureInfo
from swiftsam.modeling.encoders import ResNetSamEncoder
from swiftsam.modeling.sam import ImageSpec, build_sam
from swiftsam.modeling.stages import sam_stages
from swiftsam.zoo.checkpoint import save_checkpoint
from tests.conftest import ROOT, randomize_

SNOWBOARD = ROOT / "assets" / "snowboard.jpg"
BOX = np.array([275, 15, 410, 409])


@pytest.mark.parametrize("name", swiftsam.list_models())
def test_every_zoo_model_declares_its_contract(name):
    with torch.device("meta"):
        model = swiftsam.build(name)
    c = model.contract
    assert c.name == name and c.image == swiftsam.get_entry(name).spec
    assert ModelContract.from_dict(c.to_dict()) == c  # what manifests and checkpoints record comes back equal
    if swiftsam.get_entry(name).family in ("sam2", "nanosam2"):  # layout follows the input size (forward_image checks)
        assert [f.size * s for f, s in zip(c.features, (16, 4, 8))] == [c.image.input_size] * 3
    else:
        assert c.features == tuple(model.image_encoder.feature_info)  # the encoder declares its layout
    assert c.embedding_shape == (model.prompt_encoder.embed_dim, *model.prompt_encoder.image_embedding_size)
    assert c.mask_input_size == tuple(model.prompt_encoder.mask_input_size)
    assert (c.multimask_only, c.box_mask_prior) == (model.multimask_only, model.box_mask_prior)


def test_flags_are_the_contract():
    model = swiftsam.build("nanosam-r18", input_size=128)
    model.box_mask_prior, model.multimask_only = True, True
    model.everything_defaults = {"pred_iou_thresh": 0.5}
    assert model.contract.box_mask_prior and model.contract.multimask_only
    assert model.contract.everything_defaults == {"pred_iou_thresh": 0.5}
    with pytest.raises(ValueError, match="not a swiftsam model contract"):
        ModelContract.from_dict({"format": "something else"})


def test_a_checkpoint_brings_its_contract_back(tmp_path):
    model = randomize_(swiftsam.build("nanosam-r18", input_size=128), seed=1)
    model.box_mask_prior, model.multimask_only = True, True
    model.everything_defaults = {"points_per_side": 8}
    save_checkpoint(model, tmp_path / "m.pt")
    back = swiftsam.load("nanosam-r18", checkpoint=tmp_path / "m.pt")
    assert back.contract == model.contract


def test_the_embedding_layout_comes_from_the_encoder():
    """A student whose embedding is 256 x 32 x 32 (not SAM's 64 x 64): the prompt side, the stages, the
    exported graphs and the Predictor all follow its feature_info."""
    model = build_sam(ResNetSamEncoder("resnet18", img_size=256, grid=32), ImageSpec(input_size=256)).eval()
    randomize_(model, seed=2)
    assert model.contract.features == (FeatureInfo("image_embeddings", 256, 32),)
    assert model.contract.mask_input_size == (128, 128)
    stages = model.stages
    assert stages["decode"].input_shapes({"embedding_batch": 1, "prompts": 2, "points": 3})["mask_input"] == (2, 1, 128, 128)
    features = model.forward_image(torch.zeros(1, 3, 256, 256))
    assert features.embedding.shape == (1, 256, 32, 32) and features.high_res == ()
    p = Predictor(model, engine="torch")
    p.set_image(SNOWBOARD)
    masks, scores, low = p.predict(box=BOX, multimask_output=False)
    assert masks.shape == (1, 428, 640) and low.shape == (1, 128, 128)
    if importlib.util.find_spec("onnxruntime"):  # exported with the same layout, run by onnxruntime
        ort = Predictor(model, engine="onnxruntime")
        ort.set_image(SNOWBOARD)
        _, ort_scores, ort_low = ort.predict(box=BOX, multimask_output=False)
        np.testing.assert_allclose(ort_low, low, atol=1e-3)
        np.testing.assert_allclose(ort_scores, scores, atol=1e-4)


def test_export_stages_are_the_models(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from swiftsam.export.onnx import export_onnx

    model = build_sam(ResNetSamEncoder("resnet18", img_size=128, grid=32), ImageSpec(input_size=128)).eval()
    manifest = export_onnx(model, tmp_path, ("encoder", "decoder"))
    stages = sam_stages(model.contract)
    for part, stage in (("encoder", "encode"), ("decoder", "decode")):
        graph = onnx.load(str(tmp_path / manifest["files"][part]["file"]))
        assert [i.name for i in graph.graph.input] == stages[stage].input_names
        assert [o.name for o in graph.graph.output] == stages[stage].output_names
        dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
        for t in stages[stage].inputs:  # fixed sizes and named dynamic axes, as the stage declares
            assert dims[t.name] == list(t.shape), t.name
    assert ModelContract.from_dict(manifest["contract"]) == model.contract


def test_a_predictor_runs_from_an_export_folder_alone(tmp_path):
    """The bundled default model: its export carries the box mask prior and the input size, so a Predictor
    with no torch weights gives the torch Predictor's masks."""
    pytest.importorskip("onnxruntime")
    from swiftsam.export.onnx import export_onnx

    torch_model = swiftsam.load()
    export_onnx(torch_model, tmp_path, ("encoder", "decoder"))
    exported = swiftsam.load_export(tmp_path)
    assert exported.contract == torch_model.contract and exported.box_mask_prior
    assert all(p.is_meta for p in exported.parameters())  # no weights were read
    ref, ours = Predictor(torch_model, engine="torch"), Predictor.from_export(tmp_path)
    boxes = np.array([BOX, [331, 383, 408, 423], [20, 30, 300, 250]])
    for p in (ref, ours):
        p.set_image(SNOWBOARD)
    a, sa, _ = ref.predict_batch(boxes=boxes, multimask_output=False)
    b, sb, _ = ours.predict_batch(boxes=boxes, multimask_output=False)
    for k in range(len(boxes)):
        inter, union = (a[k, 0] & b[k, 0]).sum(), (a[k, 0] | b[k, 0]).sum()
        assert inter / union >= 0.99, k
    np.testing.assert_allclose(sa, sb, atol=1e-3)


def test_an_old_export_without_a_contract_says_to_export_again(tmp_path):
    import json

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "swiftsam-onnx/1", "files": {}}))
    with pytest.raises(EngineError, match="export the model again"):
        swiftsam.load_export(tmp_path)


def test_an_embedding_file_is_refused_by_a_model_with_another_image_spec(tmp_path):
    small, large = (Predictor(swiftsam.load(input_size=s), engine="torch") for s in (256, 512))
    small.set_image(SNOWBOARD)
    small.save_embedding(tmp_path / "e.pt")
    payload = torch.load(tmp_path / "e.pt", weights_only=True)
    assert ModelContract.from_dict(payload["contract"]) == small.model.contract
    with pytest.raises(swiftsam.InputError, match="input size 256"):
        large.load_embedding(tmp_path / "e.pt")  # same shape, another encoder frame: silently wrong before
    back = Predictor(swiftsam.load(), engine="torch")
    back.load_embedding(tmp_path / "e.pt")
    assert torch.equal(back.get_image_embedding(), small.get_image_embedding())


def test_cli_runs_an_export_folder_with_its_own_contract(tmp_path, capsys):
    """`swiftsam segment --engine onnxruntime --onnx-dir DIR` of the default model's export: no torch weights
    load, the box prior and the input size come from the manifest, and the mask equals the torch one."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from swiftsam.cli import main

    assert main(["export", "swiftsam-r18", "--out", str(tmp_path / "exp"), "--parts", "encoder,decoder"]) == 0
    box = ",".join(str(v) for v in BOX)
    assert main(["segment", str(SNOWBOARD), "--box", box, "--engine", "torch", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["segment", str(SNOWBOARD), "--box", box, "--engine", "onnxruntime", "--onnx-dir",
                 str(tmp_path / "exp"), "--out", str(tmp_path / "o.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f)) > 0 for f in ("t.png", "o.png"))
    assert (a & b).sum() / (a | b).sum() >= 0.99
    capsys.readouterr()
    assert main(["segment", str(SNOWBOARD), "--model", "mobilesam", "--box", box, "--engine", "onnxruntime",
                 "--onnx-dir", str(tmp_path / "exp"), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds an export of swiftsam-r18" in capsys.readouterr().err


def test_square_geometry_resizes_without_padding_and_scales_prompts_per_axis():
    """SAM 2's geometry: the image is resized to S x S (aspect ratio changes), prompts scale per axis, and
    low-res logits go straight to the image size."""
    from PIL import Image
    from torch.nn import functional as F

    from swiftsam.prompts import PromptBatch
    from swiftsam.transforms import preprocess_image

    spec = ImageSpec(input_size=128, geometry="square")
    model = build_sam(ResNetSamEncoder("resnet18", img_size=128, grid=32), spec).eval()
    randomize_(model, seed=4)
    image = np.random.default_rng(0).integers(0, 256, (80, 160, 3), dtype=np.uint8)
    x, hw = preprocess_image(image, spec)
    # as SAM 2's transforms: to 0..1, torchvision's tensor Resize (bilinear, antialiased), then normalise
    resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, (128, 128),
                            mode="bilinear", align_corners=False, antialias=True)
    want = (resized - torch.tensor(spec.pixel_mean).view(-1, 1, 1) / 255) / (torch.tensor(spec.pixel_std).view(-1, 1, 1) / 255)
    assert hw == (128, 128) and torch.allclose(x, want, atol=1e-5)  # no padding
    pil = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR), np.float32)  # not PIL's filter
    assert not np.allclose(resized[0].permute(1, 2, 0).numpy() * 255, pil, atol=0.5)
    batch = PromptBatch.from_pixels(model, (80, 160), boxes=np.array([[16, 8, 80, 40]]))
    np.testing.assert_allclose(batch.point_coords[0].numpy(), [[16 * 1024 / 160, 8 * 1024 / 80],
                                                               [80 * 1024 / 160, 40 * 1024 / 80]], rtol=1e-6)
    p = Predictor(model, engine="torch")
    p.set_image(image)
    logits, _, low = p.predict(box=np.array([16, 8, 80, 40]), multimask_output=False, return_logits=True)
    assert logits.shape == (1, 80, 160) and p.input_size == (1024, 1024)
    straight = F.interpolate(torch.from_numpy(low)[None], (80, 160), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(logits, straight.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown image geometry"):
        ImageSpec(geometry="letterbox")


def test_dynamic_multimask_keeps_token_0_only_where_it_is_stable():
    from swiftsam.modeling.prompt_decoder import choose_outputs

    low = torch.full((2, 4, 8, 8), -10.0)
    low[:, :, :4] = 10.0  # prompt 0: token 0 far from the threshold everywhere: stable
    low[1, 0, 4:6] = 0.01  # prompt 1: 16 pixels of token 0 sit just above 0: area(>0.05) / area(>-0.05) = 32 / 48
    iou = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.3, 0.9]])
    out, score = choose_outputs(low, iou, "single", multimask_only=False, dynamic_multimask=(0.05, 0.98))
    assert score[:, 0].tolist() == pytest.approx([0.1, 0.9])  # token 0, then the best of 1..3 (token 3)
    assert torch.equal(out[1, 0], low[1, 3])
    plain, _ = choose_outputs(low, iou, "single", multimask_only=False)
    assert torch.equal(plain[:, 0], low[:, 0])  # SAM 1's rule: always token 0
    model = swiftsam.build("nanosam-r18", input_size=128)
    model.contract = model.contract.replace(dynamic_multimask=True)
    assert ModelContract.from_dict(model.contract.to_dict()) == model.contract
    assert model.contract.output_policy()["dynamic_multimask"] == (0.05, 0.98)
