"""SAM 2.1 mask decoder and memory modules against the reference sam2 on the same random weights."""

from __future__ import annotations

import pytest
import torch

from swiftsam.errors import InputError
from swiftsam.modeling.memory_attention import apply_rope, axial_rope_angles, build_memory_attention
from swiftsam.modeling.memory_encoder import build_memory_encoder
from swiftsam.modeling.sam2_mask_decoder import build_sam2_mask_decoder
from tests.conftest import randomize_

pytest.importorskip("sam2")

from sam2.modeling import memory_attention as ref_ma  # noqa: E402
from sam2.modeling import memory_encoder as ref_me  # noqa: E402
from sam2.modeling.position_encoding import PositionEmbeddingSine as RefSine  # noqa: E402
from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis  # noqa: E402
from sam2.modeling.sam.mask_decoder import MaskDecoder as RefMaskDecoder  # noqa: E402
from sam2.modeling.sam.transformer import RoPEAttention as RefRoPEAttention  # noqa: E402
from sam2.modeling.sam.transformer import TwoWayTransformer as RefTwoWay  # noqa: E402

TOL = 1e-4


def _ref_decoder(**extra) -> RefMaskDecoder:
    """sam2's decoder as SAM 2.1 builds it (sam2_base._build_sam_heads + the 2.1 config)."""
    return RefMaskDecoder(
        num_multimask_outputs=3,
        transformer=RefTwoWay(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256, use_high_res_features=True,
        iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True, **extra,
    )


def _ref_memory_attention(feat: int, num_layers: int = 4) -> ref_ma.MemoryAttention:
    rope = dict(rope_theta=10000.0, feat_sizes=[feat, feat], embedding_dim=256, num_heads=1, downsample_rate=1,
                dropout=0.1)
    layer = ref_ma.MemoryAttentionLayer(
        activation="relu", dim_feedforward=2048, dropout=0.1, pos_enc_at_attn=False, d_model=256,
        self_attention=RefRoPEAttention(**rope), pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=RefRoPEAttention(**rope, rope_k_repeat=True, kv_in_dim=64),
    )
    return ref_ma.MemoryAttention(d_model=256, pos_enc_at_input=True, layer=layer, num_layers=num_layers)


def _ref_memory_encoder() -> ref_me.MemoryEncoder:
    return ref_me.MemoryEncoder(
        out_dim=64,
        position_encoding=RefSine(num_pos_feats=64, normalize=True, scale=None, temperature=10000),
        mask_downsampler=ref_me.MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=ref_me.Fuser(ref_me.CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                          use_dwconv=True), num_layers=2),
    )


def _pair(ours: torch.nn.Module, ref: torch.nn.Module, seed: int = 0):
    """Random weights in ours, loaded strictly into sam2's (so keys and shapes must be equal)."""
    randomize_(ours, seed)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours.eval(), ref.eval()


STABILITY = dict(dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
                 dynamic_multimask_stability_thresh=0.98)


@pytest.fixture(scope="module")
def decoders():
    """(ours, sam2's) decoder with the same random weights, dynamic multimask on (as build_sam2 sets it)."""
    return _pair(build_sam2_mask_decoder(**STABILITY), _ref_decoder(**STABILITY))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= tol, err


def _decoder_inputs(b: int, n_img: int, h: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    img = r(n_img, 256, h, h)
    pe = r(1, 256, h, h)
    sparse = r(b, 3, 256)
    dense = r(b, 256, h, h)
    s0, s1 = r(n_img, 32, 4 * h, 4 * h), r(n_img, 64, 2 * h, 2 * h)
    return img, pe, sparse, dense, (s0, s1)


def test_keys_and_shapes_equal_sam2():
    for ours, ref in [(build_sam2_mask_decoder(), _ref_decoder()),
                      (build_memory_attention(), _ref_memory_attention(64)),
                      (build_memory_encoder(), _ref_memory_encoder())]:
        mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert mine == theirs


@pytest.mark.parametrize("n_img", [1, 3])
def test_decoder_predict_all_matches_sam2(decoders, n_img):
    ours, ref = decoders
    img, pe, sparse, dense, hr = _decoder_inputs(3, n_img)
    with torch.no_grad():
        masks, iou, obj, tokens = ours.predict_all(img, pe, sparse, dense, hr, return_tokens=True)
        r_masks, r_iou, r_tokens, r_obj = ref.predict_masks(img, pe, sparse, dense, repeat_image=n_img == 1,
                                                            high_res_features=list(hr))
    assert masks.shape == (3, 4, 64, 64) and iou.shape == (3, 4) and obj.shape == (3, 1)
    _close(masks, r_masks)
    _close(iou, r_iou)
    _close(obj, r_obj)
    _close(tokens[:, 2:], r_tokens)
    assert tokens.shape == (3, 6, 256)
    assert (iou >= 0).all() and (iou <= 1).all()  # the sigmoid IoU head


def test_decoder_needs_high_res_features(decoders):
    dec = decoders[0]
    img, pe, sparse, dense, _ = _decoder_inputs(1, 1, h=4)
    with pytest.raises(InputError, match="high_res_features"):
        dec.predict_all(img, pe, sparse, dense, None)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_decoder_forward_matches_sam2(decoders, multimask, training):
    ours, ref = decoders
    img, pe, sparse, dense, hr = _decoder_inputs(2, 1, h=8)
    try:
        ours.train(training), ref.train(training)  # training: no dynamic fallback (no dropout in the decoder)
        with torch.no_grad():
            got = ours(img, pe, sparse, dense, multimask, repeat_image=True, high_res_features=list(hr))
            want = ref(img, pe, sparse, dense, multimask, repeat_image=True, high_res_features=list(hr))
    finally:
        ours.eval(), ref.eval()
    assert got[0].shape[1] == (3 if multimask else 1)
    assert got[2].shape[1] == (3 if multimask else 1)
    for a, b in zip(got, want):
        _close(a, b)


def test_dynamic_multimask_matches_sam2_on_stable_and_unstable_masks():
    ours = build_sam2_mask_decoder(**STABILITY)
    ref = _ref_decoder(**STABILITY)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 4, 16, 16, generator=g) * 5
    logits[1, 0] = 0.01 * torch.randn(16, 16, generator=g)  # unstable single mask: falls back
    logits[2, 0] = -0.2  # empty at both thresholds: stability 1 (stable)
    logits[3, 0, :8] = 0.03  # between the thresholds on half: unstable
    iou = torch.rand(4, 4, generator=g)
    got = ours.dynamic_multimask(logits, iou)
    want = ref._dynamic_multimask_via_stability(logits, iou)
    stable = ours.stability_scores(logits[:, 0:1]) >= 0.98
    assert stable[:, 0].tolist() == [True, False, True, False]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_decoder_forward_checks_image_batch(decoders):
    dec = decoders[0]
    img, pe, sparse, dense, hr = _decoder_inputs(2, 3, h=4)
    with pytest.raises(InputError, match="prompts"):
        dec(img, pe, sparse, dense, True, repeat_image=False, high_res_features=list(hr))
    with pytest.raises(InputError, match="repeat_image"):
        dec(img, pe, sparse, dense, True, repeat_image=True, high_res_features=list(hr))


def _memory_inputs(feat: int, batch: int, frames: int, ptrs: int, seed: int = 2):
    """Sequence-first inputs as sam2_base builds them; ``ptrs`` 256-wide object pointers become
    4 * ptrs 64-wide tokens at the end of the memory."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    hw = feat * feat
    curr, curr_pos = r(hw, batch, 256), r(hw, batch, 256)
    mem, mem_pos = r(frames * hw, batch, 64), r(frames * hw, batch, 64)
    obj_ptrs = r(ptrs, batch, 256).reshape(ptrs, batch, 4, 64).permute(0, 2, 1, 3).flatten(0, 1)
    obj_pos = r(ptrs, batch, 64).repeat_interleave(4, dim=0)
    return curr, curr_pos, torch.cat([mem, obj_ptrs]), torch.cat([mem_pos, obj_pos]), 4 * ptrs


@pytest.mark.parametrize(
    "feat,batch,frames,ptrs,layers",
    [(64, 1, 1, 1, 1),  # sam2's own 1024-px grid (one layer keeps it quick)
     (8, 2, 3, 2, 4),  # a 128-px grid, several frames and pointers, full depth
     (8, 1, 2, 0, 4)],  # no object pointers
)
def test_memory_attention_matches_sam2(feat, batch, frames, ptrs, layers):
    ours, ref = _pair(build_memory_attention(num_layers=layers), _ref_memory_attention(feat, layers))
    curr, curr_pos, mem, mem_pos, n_ptr = _memory_inputs(feat, batch, frames, ptrs)
    with torch.no_grad():
        got = ours(curr, mem, curr_pos, mem_pos, num_obj_ptr_tokens=n_ptr)
        want = ref(curr, mem, curr_pos, mem_pos, num_obj_ptr_tokens=n_ptr)
    assert got.shape == (feat * feat, batch, 256)
    _close(got, want)
    # sam2's list form of the current features gives the same
    with torch.no_grad():
        _close(ours([curr], mem, [curr_pos], mem_pos, num_obj_ptr_tokens=n_ptr), got, 0)


def test_rope_matches_sam2_on_non_square_grid():
    h, w, d = 3, 5, 16
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 1, h * w, d, generator=g), torch.randn(2, 1, 3 * h * w, d, generator=g)
    angles = axial_rope_angles(d, h, w)
    got_q, got_k = apply_rope(q, angles.cos(), angles.sin()), apply_rope(k, angles.cos(), angles.sin())
    want_q, want_k = apply_rotary_enc(q, k, compute_axial_cis(d, end_x=w, end_y=h), repeat_freqs_k=True)
    _close(got_q, want_q, 1e-5)
    _close(got_k, want_k, 1e-5)


def test_memory_attention_non_square_feat_size():
    ma = randomize_(build_memory_attention(num_layers=1)).eval()
    curr, curr_pos, mem, mem_pos, n_ptr = _memory_inputs(4, 1, 1, 1)
    curr, curr_pos, mem, mem_pos = curr[:12], curr_pos[:12], torch.cat([mem[:12], mem[16:]]), \
        torch.cat([mem_pos[:12], mem_pos[16:]])
    with pytest.raises(InputError, match="feat_size"):
        ma(curr, mem, curr_pos, mem_pos, num_obj_ptr_tokens=n_ptr)
    with torch.no_grad():
        out = ma(curr, mem, curr_pos, mem_pos, num_obj_ptr_tokens=n_ptr, feat_size=(3, 4))
    assert out.shape == (12, 1, 256) and torch.isfinite(out).all()
    with pytest.raises(InputError, match="whole number"):
        ma(curr, mem[1:], curr_pos, mem_pos[1:], num_obj_ptr_tokens=n_ptr, feat_size=(3, 4))


def test_memory_mask_equals_unpadded_memory():
    """A padded memory (an extra frame and extra pointer tokens, masked out) gives the result of the
    valid tokens alone: what fixed-shape export relies on."""
    ma = randomize_(build_memory_attention(num_layers=2)).eval()
    feat = 8
    curr, curr_pos, mem, mem_pos, n_ptr = _memory_inputs(feat, 2, 1, 1)
    hw = feat * feat
    g = torch.Generator().manual_seed(5)
    pad_frame, pad_ptr = torch.randn(hw, 2, 64, generator=g), torch.randn(n_ptr, 2, 64, generator=g)
    padded = torch.cat([mem[:hw], pad_frame, mem[hw:], pad_ptr])
    padded_pos = torch.cat([mem_pos[:hw], pad_frame, mem_pos[hw:], pad_ptr])
    valid = torch.cat([torch.ones(hw), torch.zeros(hw), torch.ones(n_ptr), torch.zeros(n_ptr)]).bool()
    with torch.no_grad():
        want = ma(curr, mem, curr_pos, mem_pos, num_obj_ptr_tokens=n_ptr)
        got = ma(curr, padded, curr_pos, padded_pos, num_obj_ptr_tokens=2 * n_ptr,
                 memory_mask=valid[None].expand(2, -1))
        unmasked = ma(curr, padded, curr_pos, padded_pos, num_obj_ptr_tokens=2 * n_ptr)
    _close(got, want, 1e-5)
    assert (unmasked - want).abs().max() > 1e-3  # the padding would matter without the mask


@pytest.mark.parametrize("skip_sigmoid", [False, True])
def test_memory_encoder_matches_sam2(skip_sigmoid):
    ours, ref = _pair(build_memory_encoder(), _ref_memory_encoder())
    g = torch.Generator().manual_seed(4)
    pix, masks = torch.randn(2, 256, 16, 16, generator=g), torch.randn(2, 1, 256, 256, generator=g) * 4
    with torch.no_grad():
        got = ours(pix, masks, skip_mask_sigmoid=skip_sigmoid)
        want = ref(pix, masks, skip_mask_sigmoid=skip_sigmoid)
    assert got["vision_features"].shape == (2, 64, 16, 16)
    _close(got["vision_features"], want["vision_features"])
    _close(got["vision_pos_enc"][0], want["vision_pos_enc"][0], 1e-5)


def test_memory_attention_onnx_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from swiftsam.export.onnx import OPSET, check_graph

    ma = randomize_(build_memory_attention(num_layers=2)).eval()
    curr, curr_pos, mem, mem_pos, n_ptr = _memory_inputs(8, 1, 2, 2)
    valid = torch.ones(1, mem.shape[0], dtype=torch.bool)
    valid[:, 64:128] = False  # second frame slot empty

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ma = ma

        def forward(self, curr, curr_pos, mem, mem_pos, valid):
            return self.ma(curr, mem, curr_pos, mem_pos, num_obj_ptr_tokens=n_ptr, memory_mask=valid)

    args = (curr, curr_pos, mem, mem_pos, valid)
    names = ["curr", "curr_pos", "memory", "memory_pos", "memory_valid"]
    path = tmp_path / "memory_attention.onnx"
    with torch.no_grad():
        want = Wrapped()(*args)
        torch.onnx.export(Wrapped(), args, str(path), input_names=names, output_names=["out"],
                          opset_version=OPSET, dynamo=False)
    check_graph(path)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any("complex" in op.lower() for op in ops)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    _close(torch.from_numpy(got), want, 1e-3)


def test_decoder_predict_all_onnx_matches_torch(decoders, tmp_path):
    """predict_all traces without data-dependent branches; one shared image, several prompts."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from swiftsam.export.onnx import OPSET, check_graph

    dec = decoders[0]

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = dec

        def forward(self, img, pe, sparse, dense, s0, s1):
            return self.dec.predict_all(img, pe, sparse, dense, (s0, s1))

    img, pe, sparse, dense, (s0, s1) = _decoder_inputs(2, 1, h=8)
    args = (img, pe, sparse, dense, s0, s1)
    names = ["image_embed", "image_pe", "sparse", "dense", "high_res_feats_0", "high_res_feats_1"]
    path = tmp_path / "sam2_decoder.onnx"
    with torch.no_grad():
        want = Wrapped()(*args)
        torch.onnx.export(Wrapped(), args, str(path), input_names=names, output_names=["masks", "iou", "obj"],
                          opset_version=OPSET, dynamo=False)
    check_graph(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    for g, w in zip(got, want):
        _close(torch.from_numpy(g), w, 1e-3)
