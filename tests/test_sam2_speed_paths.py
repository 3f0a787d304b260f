"""SAM 2.1's image stage takes the graph-friendly paths (issue 20: fp32 CPU speed) and still gives the results of the
plain module-by-module computation: q / k / v as three products with the qkv weight's row blocks (no Split of a fused
output in exported graphs), and the decoder's projections of lateral-only FPN levels folded into one 1x1
convolution (the 256-channel stride-4 / stride-8 maps are never made)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from swiftsam.modeling.encoders.hiera import MultiScaleAttention, max_pool_channels_last
from swiftsam.modeling.sam2 import build_sam2
from tests.conftest import randomize_

SIZE = 128


def _model():
    return randomize_(build_sam2("tiny", depth=(1, 1, 2, 1), input_size=SIZE), seed=3).eval()


def _unfused_stage(model, x):
    """The image stage as the modules spell it: the whole neck, then conv_s0 / conv_s1 on its 256-channel levels."""
    fpn = model.image_encoder(x)["backbone_fpn"]
    d = model.sam_mask_decoder
    return fpn[-1] + model.no_mem_embed.reshape(1, -1, 1, 1), d.conv_s0(fpn[0]), d.conv_s1(fpn[1])


def _fused_qkv_attention(attn: MultiScaleAttention, x):
    """The attention with qkv as one product, split afterwards (how sam2 writes it)."""
    b, h, w, _ = x.shape
    heads, d = attn.num_heads, attn.dim_out
    q, k, v = attn.qkv(x).reshape(b, h * w, 3, heads, d // heads).unbind(2)
    if attn.q_stride is not None:
        q = max_pool_channels_last(q.reshape(b, h, w, d), attn.q_stride)
        h, w = q.shape[1], q.shape[2]
        q = q.reshape(b, h * w, heads, d // heads)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, d))


@pytest.mark.parametrize("q_stride", [None, (2, 2)])
def test_split_qkv_attention_matches_fused(q_stride):
    torch.manual_seed(0)
    attn = MultiScaleAttention(32, 64, num_heads=2, q_stride=q_stride).eval()
    x = torch.randn(3, 8, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _fused_qkv_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_other_qkv_modules_are_called_as_they_are():
    """A module other than a plain Linear in qkv's place (dynamic quantization here) is called, not bypassed."""
    torch.manual_seed(0)
    attn = MultiScaleAttention(32, 64, num_heads=2, q_stride=(2, 2)).eval()
    x = torch.randn(2, 8, 8, 32)
    quantized = torch.ao.quantization.quantize_dynamic(attn, {nn.Linear}, dtype=torch.qint8)
    assert type(quantized.qkv) is not nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), _fused_qkv_attention(quantized, x))
        torch.testing.assert_close(quantized(x), attn(x), rtol=0.1, atol=0.1)  # int8 weights: close, not equal


def test_image_stage_matches_unfused_computation():
    model = _model()
    assert all(model.image_encoder.neck.foldable(i, c) for i, c in ((0, model.sam_mask_decoder.conv_s0),
                                                                    (1, model.sam_mask_decoder.conv_s1)))
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model.image_stage()(x), _unfused_stage(model, x)
    assert [t.shape for t in ours] == [t.shape for t in ref]
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_image_stage_under_bf16_autocast_stays_close():
    model = _model()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = model.image_stage()(x), _unfused_stage(model, x)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype
        assert (a.float() - b.float()).abs().max() <= 0.05 * b.float().abs().max()


def test_levels_with_top_down_input_are_not_folded():
    """With a top-down path into every level, no level is lateral-only: the stage computes the whole neck."""
    model = _model()
    neck = model.image_encoder.neck
    neck.fpn_top_down_levels = [0, 1, 2, 3]
    d = model.sam_mask_decoder
    assert not neck.foldable(0, d.conv_s0) and not neck.foldable(1, d.conv_s1)
    assert not neck.foldable(0, nn.Conv2d(256, 32, 3, padding=1))
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(model.image_stage()(x), _unfused_stage(model, x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_neck_features_skip_only_unread_levels():
    """Level 3 (stride 32) feeds level 2's top-down path, so asking to skip it still computes it."""
    model = _model()
    neck = model.image_encoder.neck
    with torch.no_grad():
        xs = model.image_encoder.trunk(torch.randn(1, 3, SIZE, SIZE))
        full = neck.features(xs)
        skipped = neck.features(xs, skip=[0, 1, 3])
    assert skipped[0] is None and skipped[1] is None
    torch.testing.assert_close(skipped[3], full[3])
    torch.testing.assert_close(skipped[2], full[2])
    torch.testing.assert_close(neck(xs)[0][2], full[2])


def test_exported_encoder_has_no_qkv_split_and_folded_projections(tmp_path):
    onnx = pytest.importorskip("onnx")
    from swiftsam.export.onnx import export_part

    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_part(model, "encoder", tmp_path / "encoder.onnx")
    graph = onnx.load(str(tmp_path / "encoder.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "Split" not in ops
    # patch embedding, the laterals of the stride-16 and stride-32 levels, and the two folded projections
    assert ops.count("Conv") == 5
