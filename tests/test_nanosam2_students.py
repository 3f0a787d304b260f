"""nanosam2's students (issue 22): SAM 2.1 with a ResNet18 or MobileNetV3-Large trunk and an FPN neck.

Trunk key names and parameter counts are torchvision's (written out here from torchvision's layouts, not read from
torchvision); the neck gives the Hiera teacher's three levels; the teacher's non-encoder weights load strictly; and
the student runs everywhere a SAM 2.1 model runs (Predictor, everything mode, ONNX Runtime, OpenVINO, the video
predictor, streaming, `swiftsam track`). Small random models at 128 px."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam import Predictor
from swiftsam.errors import CheckpointError
from swiftsam.modeling.encoders.mobilenetv3 import MobileNetV3Large
from swiftsam.modeling.encoders.resnet import ResNetLevels, ResNetTrunk
from swiftsam.modeling.sam2 import Sam2
from swiftsam.zoo.checkpoint import save_checkpoint

from .conftest import randomize_, test_image

STUDENTS = ("nanosam2-resnet18", "nanosam2-mobilenetv3")
S = 128  # input size of the small models below


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def student(name: str, input_size: int = S, seed: int = 0) -> Sam2:
    model = randomize_(swiftsam.build(name, input_size=input_size), seed=seed).eval()
    with torch.no_grad():  # random objects are mostly "absent"; bias the object score so masks are kept
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
    return model


@pytest.fixture(scope="module")
def students() -> dict[str, Sam2]:
    return {name: student(name) for name in STUDENTS}


# ------------------------------------------------------------------ trunks: torchvision's names and sizes
# torchvision's mobilenet_v3_large: features.0 = Conv2dNormActivation(3, 16, 3, stride 2) (conv .0, bn .1);
# features.1..15 = InvertedResidual, `block` = [expand 1x1 (absent when it would not widen: features.1)],
# depthwise, [SqueezeExcitation fc1/fc2 with bias], project 1x1; features.16 = 1x1 conv 160 -> 960.
MOBILENETV3_KEYS = {
    "features.0.0.weight": (16, 3, 3, 3),
    "features.0.1.running_var": (16,),
    "features.1.block.0.0.weight": (16, 1, 3, 3),  # depthwise first: no expansion (16 -> 16)
    "features.1.block.1.0.weight": (16, 16, 1, 1),
    "features.2.block.0.0.weight": (64, 16, 1, 1),
    "features.2.block.1.0.weight": (64, 1, 3, 3),
    "features.2.block.2.0.weight": (24, 64, 1, 1),
    "features.4.block.1.0.weight": (72, 1, 5, 5),
    "features.4.block.2.fc1.weight": (24, 72, 1, 1),  # squeeze = make_divisible(72 // 4, 8) = 24
    "features.4.block.2.fc1.bias": (24,),
    "features.4.block.2.fc2.weight": (72, 24, 1, 1),
    "features.4.block.3.0.weight": (40, 72, 1, 1),
    "features.7.block.0.0.weight": (240, 40, 1, 1),
    "features.7.block.2.1.bias": (80,),
    "features.11.block.2.fc1.weight": (120, 480, 1, 1),
    "features.12.block.2.fc2.bias": (672,),
    "features.13.block.1.0.weight": (672, 1, 5, 5),
    "features.15.block.2.fc1.weight": (240, 960, 1, 1),
    "features.15.block.3.0.weight": (160, 960, 1, 1),
    "features.16.0.weight": (960, 160, 1, 1),
    "features.16.1.weight": (960,),
}
# stem 6 + features.1 12 + 14 expanding blocks x 18 + 8 SE blocks x 4 + features.16 6 (convs have no bias)
MOBILENETV3_TENSORS = 308
MOBILENETV3_PARAMS = 2_971_952  # torchvision's 5,483,032 minus the classifier (960*1280+1280 + 1280*1000+1000)
RESNET18_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn2.running_mean": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.bn2.bias": (512,),
}
RESNET18_TENSORS = 120  # torchvision's 122 without fc.weight / fc.bias
RESNET18_PARAMS = 11_176_512  # torchvision's 11,689,512 minus fc (512*1000+1000)


@pytest.mark.parametrize("trunk,keys,tensors,params", [
    (MobileNetV3Large, MOBILENETV3_KEYS, MOBILENETV3_TENSORS, MOBILENETV3_PARAMS),
    (ResNetLevels, RESNET18_KEYS, RESNET18_TENSORS, RESNET18_PARAMS),
], ids=["mobilenetv3", "resnet18"])
def test_trunks_have_torchvisions_keys_and_parameter_counts(trunk, keys, tensors, params):
    state = trunk().state_dict()
    assert {k: tuple(state[k].shape) for k in keys if k in state} == keys
    assert len(state) == tensors
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == params


@pytest.mark.parametrize("name,keys", [("nanosam2-resnet18", RESNET18_KEYS),
                                       ("nanosam2-mobilenetv3", MOBILENETV3_KEYS)])
def test_a_torchvision_layout_state_dict_loads_into_the_students_trunk(name, keys):
    """What a user with a torchvision ImageNet checkpoint would do: its backbone keys go to image_encoder.trunk."""
    model = swiftsam.build(name, input_size=S)
    backbone = {k: torch.randn(v.shape) if v.is_floating_point() else v
                for k, v in model.image_encoder.trunk.state_dict().items()}
    backbone.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)} if "resnet" in name else
                    {"classifier.0.weight": torch.zeros(1280, 960), "classifier.3.bias": torch.zeros(1000)})
    missing, unexpected = model.image_encoder.trunk.load_state_dict(backbone, strict=False)
    assert missing == [] and sorted(unexpected) == sorted(k for k in backbone if k.startswith(("fc.", "classifier.")))
    assert all(f"image_encoder.trunk.{k}" in model.state_dict() for k in keys)


def test_resnet_levels_end_with_the_single_level_trunks_output():
    """ResNetLevels is ResNetTrunk (same weights, same names) returning every stage; its last level is the
    trunk's output, so swiftsam-r18 (ResNetTrunk) computes what it did."""
    levels, trunk = randomize_(ResNetLevels(), 1).eval(), ResNetTrunk().eval()
    trunk.load_state_dict(levels.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        out = levels(x)
        torch.testing.assert_close(out[-1], trunk(x), atol=0, rtol=0)
    assert [t.shape[1] for t in out] == levels.channel_list[::-1] == [64, 128, 256, 512]
    assert [t.shape[-1] for t in out] == [24, 12, 6, 3]  # strides 4, 8, 16, 32


@pytest.mark.parametrize("name", STUDENTS)
def test_every_batch_norm_of_the_trunks_folds_exactly(students, name):
    """The torch engine folds batch norms into convs (engines.optimize): all of the trunk's, results unchanged."""
    from swiftsam.engines.optimize import fold_batch_norms

    stage = students[name].image_stage()
    assert not stage.training  # the stage wrapper takes the model's mode (folding refuses training mode)
    folded = fold_batch_norms(stage)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        for a, b in zip(folded(x), stage(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ the neck: the teacher's three levels
@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("size", [64, 160])
def test_fpn_gives_three_256_channel_levels_at_strides_4_8_16(name, size):
    model = swiftsam.build(name, input_size=size)
    with torch.no_grad():
        out = model.image_encoder(torch.randn(2, 3, size, size))
        stage = model.image_stage()(torch.randn(1, 3, size, size))
    want = [(2, 256, size // s, size // s) for s in (4, 8, 16)]
    assert [tuple(t.shape) for t in out["backbone_fpn"]] == want
    assert [tuple(t.shape) for t in out["vision_pos_enc"]] == want
    assert out["vision_features"] is out["backbone_fpn"][-1]
    assert [tuple(t.shape[1:]) for t in stage] == [(256, size // 16, size // 16), (32, size // 4, size // 4),
                                                   (64, size // 8, size // 8)]
    assert [(f.channels, f.size) for f in model.contract.features] == [(256, size // 16), (32, size // 4),
                                                                      (64, size // 8)]
    assert model.spec.input_size == size and model.spec.geometry == "square"


def test_the_stride_32_level_is_fused_into_the_embedding():
    """The scalped stride-32 level is not thrown away: it reaches the stride-16 embedding (and the finer levels)
    through the top-down path."""
    model = randomize_(swiftsam.build("nanosam2-resnet18", input_size=S), 2).eval()
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        levels = model.image_encoder.trunk(x)
        base, _ = model.image_encoder.neck(levels)
        levels[-1] = levels[-1] + 1.0
        moved, _ = model.image_encoder.neck(levels)
    assert len(base) == 4 and all((a - b).abs().max() > 1e-3 for a, b in zip(base[:3], moved[:3]))


def test_bad_input_sizes_and_missing_weights_get_clear_errors():
    with pytest.raises(swiftsam.InputError, match="multiple of 32"):
        swiftsam.build("nanosam2-resnet18", input_size=100)
    for name in STUDENTS:
        with pytest.raises(CheckpointError, match=r"checkpoint=.*swiftsam train.*distill-encoder"):
            swiftsam.load(name, device="cpu")


# ------------------------------------------------------------------ the teacher's heads and memory load unchanged
def test_the_teachers_non_encoder_weights_load_strictly_into_the_students():
    teacher = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=256, depth=(1, 1, 1, 1)), seed=4)
    heads = {k: v for k, v in teacher.state_dict().items() if not k.startswith("image_encoder.")}
    assert any(k.startswith("sam_mask_decoder.conv_s0") for k in heads) and any("memory_attention" in k for k in heads)
    for name in STUDENTS:
        model = swiftsam.build(name, input_size=S)
        own = model.state_dict()
        assert {k: v.shape for k, v in own.items() if not k.startswith("image_encoder.")} == \
            {k: v.shape for k, v in heads.items()}
        encoder = {k: v for k, v in own.items() if k.startswith("image_encoder.")}
        model.load_state_dict({**encoder, **heads}, strict=True)
        for k in ("sam_mask_decoder.conv_s1.weight", "memory_encoder.fuser.layers.0.dwconv.weight", "no_mem_embed"):
            assert torch.equal(model.state_dict()[k], heads[k])


@pytest.mark.parametrize("wrapped", [True, False], ids=["train-output", "bare-state-dict"])
def test_load_reads_a_students_checkpoint_with_weights_only(tmp_path, wrapped):
    model = student("nanosam2-mobilenetv3", input_size=160, seed=5)
    path = tmp_path / "model.pt"
    if wrapped:  # what `swiftsam train` writes: the state dict with the zoo name and input size
        save_checkpoint(model, path)
    else:
        torch.save(model.state_dict(), path)
    loaded = swiftsam.load("nanosam2-mobilenetv3", checkpoint=path, device="cpu",
                           **({} if wrapped else {"input_size": 160}))
    assert loaded.spec.input_size == 160
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError):
        swiftsam.load("nanosam2-resnet18", checkpoint=path, device="cpu")


# ------------------------------------------------------------------ runs where SAM 2.1 runs
@pytest.mark.parametrize("name", STUDENTS)
def test_predictor_points_and_box(students, name):
    predictor = Predictor(students[name], engine="torch")
    image = test_image(90, 120, seed=6)
    predictor.set_image(image)
    masks, scores, low = predictor.predict(np.array([[60.0, 40.0]]), np.array([1]), multimask_output=True)
    assert masks.shape == (3, 90, 120) and masks.dtype == bool and scores.shape == (3,) and np.isfinite(scores).all()
    assert low.shape == (3, S // 4, S // 4)
    masks, scores, _ = predictor.predict(box=np.array([20.0, 10.0, 100.0, 80.0]), multimask_output=False)
    assert masks.shape == (1, 90, 120) and masks.any()


def test_everything_mode_small_grid(students):
    from swiftsam.everything.generator import MaskGenerator

    image = test_image(90, 120, seed=7)
    gen = MaskGenerator(Predictor(students["nanosam2-resnet18"], engine="torch"), points_per_side=3,
                        pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = gen.generate(image)
    assert records and gen.stats.prompts <= 9
    assert all(r["segmentation"].shape == (90, 120) for r in records)


def test_onnx_export_and_predictor_match_torch(students, tmp_path):
    """The exported graphs (onnxruntime) give torch's features, masks and scores within 1e-3 (point and box)."""
    pytest.importorskip("onnxruntime")
    from swiftsam.export.onnx import export_onnx

    model = students["nanosam2-mobilenetv3"]
    export_onnx(model, tmp_path / "x", parts=("encoder", "decoder"))
    image = test_image(90, 120, seed=8)
    pt, po = Predictor(model, engine="torch"), Predictor.from_export(tmp_path / "x")
    pt.set_image(image)
    po.set_image(image)
    for a, b in zip(po.get_image_features().levels, pt.get_image_features().levels, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    for prompt in ({"point_coords": np.array([[60.0, 40.0]]), "point_labels": np.array([1])},
                   {"box": np.array([20.0, 10.0, 100.0, 80.0])}):
        for a, b in zip(po.predict(**prompt, return_logits=True), pt.predict(**prompt, return_logits=True)):
            np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)


def test_onnx_encoder_of_the_resnet_student_matches_torch(students, tmp_path):
    """The ResNet18 student's encoder graph (its heads are the same graphs as above) on onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from swiftsam.export.onnx import export_onnx

    model = students["nanosam2-resnet18"]
    export_onnx(model, tmp_path / "x", parts=("encoder",))
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(8))
    session = ort.InferenceSession(str(tmp_path / "x" / "encoder.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        want = model.forward_image(x).levels
    assert len(got) == len(want) == 3
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-3, rtol=0)


def test_openvino_encoder_matches_torch(students):
    """The student's own part, its encoder stage, on OpenVINO (the heads are the teacher's, tested with SAM 2.1)."""
    pytest.importorskip("openvino")
    from swiftsam.engines import get_engine

    model = students["nanosam2-mobilenetv3"]
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        want = model.forward_image(x).levels
    got = get_engine("openvino", model, precision="fp32").encode(x).levels
    assert len(got) == len(want) == 3
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)


def frames(n: int = 3, h: int = 72, w: int = 96) -> list[np.ndarray]:
    out = []
    for k in range(n):
        im = test_image(h, w, seed=10).copy()
        im[16:48, 12 + 6 * k:52 + 6 * k] = (220, 60, 60)  # a red block moving right
        out.append(im)
    return out


def test_video_predictor_and_streaming_session_agree(students):
    from swiftsam.video import StreamingSession, VideoPredictor

    model, video = students["nanosam2-resnet18"], frames()
    opts = {"max_obj_ptrs_in_encoder": len(video)}  # sam2 caps the pointer window at the video's length
    p = VideoPredictor(model, **opts)
    state = p.init_state(video)
    p.add_new_points_or_box(state, 0, 1, box=np.array([12, 16, 52, 48], np.float32))
    want = {f: m for f, _, m in p.propagate_in_video(state)}
    assert sorted(want) == [0, 1, 2] and all(m.shape == (1, 1, 72, 96) for m in want.values())
    s = StreamingSession(model, **opts)
    s.start(video[0])
    got = {0: s.add_prompt(1, box=[12, 16, 52, 48])[1]}
    for f in (1, 2):
        got[f] = s.track(video[f])[1]
    for f in want:
        torch.testing.assert_close(got[f], want[f], atol=1e-4, rtol=0, msg=lambda m, f=f: f"frame {f}: {m}")
    assert (want[2] > 0).any()


def test_track_cli_on_a_frame_folder(students, tmp_path, capsys):
    from swiftsam.cli import main

    save_checkpoint(students["nanosam2-mobilenetv3"], tmp_path / "s.pt")
    (tmp_path / "frames").mkdir()
    for k, im in enumerate(frames()):
        Image.fromarray(im).save(tmp_path / "frames" / f"{k:05d}.jpg")
    code = main(["track", str(tmp_path / "frames"), "--model", "nanosam2-mobilenetv3", "--checkpoint",
                 str(tmp_path / "s.pt"), "--box", "12,16,52,48", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "track.json").read_text())
    assert summary["frames"] == 3 and (tmp_path / "out" / "00002.png").is_file()
    code = main(["track", str(tmp_path / "frames"), "--model", "nanosam2-resnet18", "--box", "12,16,52,48",
                 "--out", str(tmp_path / "out2"), "--device", "cpu"])
    assert code == 2 and "checkpoint" in capsys.readouterr().err
