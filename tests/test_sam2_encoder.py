"""SAM 2.1's image encoder (Hiera trunk + FPN neck) against the reference package sam2==1.1.0."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from swiftsam.errors import InputError
from swiftsam.modeling.encoders import FpnNeck, Hiera, Sam2ImageEncoder, build_sam2_image_encoder
from swiftsam.modeling.encoders.hiera import HIERA_CONFIGS, reduced_global_att_blocks
from swiftsam.modeling.position_encoding import PositionEmbeddingSine
from tests.conftest import randomize_

YAML = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
REDUCED = (1, 2, 3, 2)  # every block kind: windowed, query-pooling, global, each stage's own window


def _sam2():
    return pytest.importorskip("sam2")


def _reference_from_yaml(variant: str, monkeypatch=None) -> torch.nn.Module:
    """sam2's image encoder exactly as its SAM 2.1 config builds it."""
    _sam2()  # initialises hydra with sam2's config module
    from hydra import compose
    from hydra.utils import instantiate

    cfg = compose(config_name=f"configs/sam2.1/sam2.1_hiera_{YAML[variant]}.yaml")
    return instantiate(cfg.model.image_encoder, _recursive_=True)


def _reference_like(ours: Sam2ImageEncoder) -> torch.nn.Module:
    """sam2's classes built with our trunk's (possibly reduced) configuration."""
    _sam2()
    from sam2.modeling.backbones.hieradet import Hiera as RefHiera
    from sam2.modeling.backbones.image_encoder import FpnNeck as RefNeck
    from sam2.modeling.backbones.image_encoder import ImageEncoder as RefEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine as RefSine

    t = ours.trunk
    trunk = RefHiera(embed_dim=t.patch_embed.proj.out_channels, num_heads=t.blocks[0].attn.num_heads,
                     stages=t.stages, global_att_blocks=t.global_att_blocks, window_spec=t.window_spec,
                     window_pos_embed_bkg_spatial_size=t.window_pos_embed_bkg_spatial_size)
    neck = RefNeck(RefSine(256, warmup_cache=False), 256, list(t.channel_list), fpn_top_down_levels=[2, 3],
                   fpn_interp_model="nearest")
    return RefEncoder(trunk, neck, scalp=1)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", list(HIERA_CONFIGS))
def test_keys_and_shapes_match_sam2_config(variant, monkeypatch):
    # sam2's Hiera calls .item() on a torch.linspace while building: make that one tensor a CPU tensor
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):
        ref = _reference_from_yaml(variant)
        ours = build_sam2_image_encoder(variant)
    assert _shapes(ours) == _shapes(ref)
    assert ours.trunk.channel_list == list(ref.trunk.channel_list)


def _assert_same_outputs(ours: Sam2ImageEncoder, ref: torch.nn.Module, size: tuple[int, int]) -> None:
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.eval()
    ref.eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert set(a) == set(b)
    torch.testing.assert_close(a["vision_features"], b["vision_features"], atol=1e-4, rtol=0)
    assert len(a["backbone_fpn"]) == len(b["backbone_fpn"]) == 3
    for key in ("backbone_fpn", "vision_pos_enc"):
        for u, v in zip(a[key], b[key]):
            torch.testing.assert_close(u, v, atol=1e-4, rtol=0)
    strides = [size[0] // f.shape[-2] for f in a["backbone_fpn"]]
    assert strides == [4, 8, 16]


@pytest.mark.parametrize("variant", ["tiny", "small"])
def test_full_depth_matches_sam2_at_1024(variant):
    ref = _reference_from_yaml(variant)
    ours = randomize_(build_sam2_image_encoder(variant))
    _assert_same_outputs(ours, ref, (1024, 1024))


@pytest.mark.parametrize("variant, size", [("base_plus", 1024), ("large", 512)])
def test_reduced_depth_matches_sam2(variant, size):
    ours = randomize_(build_sam2_image_encoder(variant, depth=REDUCED))
    assert ours.trunk.global_att_blocks  # the reduced copy still has a global-attention block
    _assert_same_outputs(ours, _reference_like(ours), (size, size))


def test_tiny_matches_sam2_at_512():
    # sam2 interpolates the trunk's position embedding to the input; our neck and encodings follow it too
    ours = randomize_(build_sam2_image_encoder("tiny"), seed=3)
    _assert_same_outputs(ours, _reference_like(ours), (512, 512))


def test_non_square_input_matches_sam2():
    ours = randomize_(build_sam2_image_encoder("tiny", depth=REDUCED), seed=4)
    _assert_same_outputs(ours, _reference_like(ours), (256, 384))


def test_reduced_global_att_blocks_keep_distance_from_stage_end():
    # tiny: stage 3 is blocks 3..9 with global 5, 7, 9; with stages (1, 1, 4, 1) stage 3 is blocks 2..5
    assert reduced_global_att_blocks((1, 1, 4, 1), (1, 2, 7, 2), (5, 7, 9)) == (3, 5)
    # the pooling first block of a stage never becomes global
    assert reduced_global_att_blocks((1, 1, 1, 1), (1, 2, 7, 2), (5, 7, 9)) == ()
    full = HIERA_CONFIGS["large"]
    assert reduced_global_att_blocks(full["stages"], full["stages"], full["global_att_blocks"]) == (23, 33, 43)


def test_position_encoding_matches_sam2():
    _sam2()
    from sam2.modeling.position_encoding import PositionEmbeddingSine as RefSine

    for feats, hw in ((256, (64, 64)), (64, (32, 48)), (256, (1, 1))):
        x = torch.zeros(2, 3, *hw)
        torch.testing.assert_close(PositionEmbeddingSine(feats)(x), RefSine(feats, warmup_cache=False)(x),
                                   atol=0, rtol=0)


def test_bad_inputs_raise_clear_errors():
    enc = build_sam2_image_encoder("tiny", depth=(1, 1, 1, 1))
    with pytest.raises(InputError, match="multiple of 32"):
        enc(torch.zeros(1, 3, 100, 128))
    with pytest.raises(InputError, match="B x 3 x H x W"):
        enc(torch.zeros(3, 64, 64))
    with pytest.raises(InputError, match="choose one of tiny, small, base_plus, large"):
        build_sam2_image_encoder("huge")
    with pytest.raises(InputError, match="depth must be 4 positive"):
        build_sam2_image_encoder("tiny", depth=(1, 0, 1, 1))
    with pytest.raises(ValueError, match="query-pooling"):
        Hiera(stages=(1, 1, 1, 1), global_att_blocks=(1,))
    with pytest.raises(ValueError, match="do not match"):
        Sam2ImageEncoder(Hiera(stages=(1, 1, 1, 1)), FpnNeck(256, [1, 2, 3, 4]))


def test_onnx_export_matches_torch():
    onnxruntime = pytest.importorskip("onnxruntime")
    enc = randomize_(build_sam2_image_encoder("tiny", depth=(1, 1, 2, 1))).eval()

    class Flat(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            out = self.encoder(x)
            return (out["vision_features"], *out["backbone_fpn"][:2])

    model = Flat(enc)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks, fixed at this size
        torch.onnx.export(model, (x,), buf, opset_version=17, input_names=["image"], dynamo=False)
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert [g.shape for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-3, rtol=0)
