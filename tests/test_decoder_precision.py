"""The mask decoder in bf16 (torch engine ``decoder_dtype``, OpenVINO ``decoder_precision``): a cast copy, prompt
encoding kept in float32, agreement with fp32, clear errors; and the dense position encoding's cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam import Predictor
from swiftsam.engines import get_engine
from swiftsam.errors import EngineError
from swiftsam.modeling.prompt_decoder import PromptDecoder
from tests.conftest import have, randomize_, test_image


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def flat_prompts(seed: int = 3):
    """Three prompts: clicks + padding, a box, clicks + a box with a mask input (1024-px prompt frame)."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(3, 4, 2, generator=g) * 1000
    labels = torch.tensor([[1, 0, 1, -1], [2, 3, -1, -1], [1, 0, 2, 3]], dtype=torch.float32)
    return coords, labels, torch.randn(3, 1, 256, 256, generator=g), torch.tensor([0.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def mobilesam():
    return randomize_(swiftsam.build("mobilesam"), 0).eval()


@torch.inference_mode()
def test_bf16_decoder_is_a_cast_copy_close_to_fp32(mobilesam):
    model = mobilesam
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    fp32 = get_engine("torch", model)
    bf16 = get_engine("torch", model, decoder_dtype="bf16")
    assert bf16.describe().startswith("torch[fp32, decoder bf16")
    low32, iou32 = fp32.decode(emb, *flat_prompts())
    low16, iou16 = bf16.decode(emb, *flat_prompts())
    assert low16.dtype == iou16.dtype == torch.float32
    # the model itself is untouched; the copy is bf16, the prompt encoder float32
    assert next(model.mask_decoder.parameters()).dtype == torch.float32
    assert {p.dtype for p in bf16._decoder.mask_decoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16._decoder.prompt_encoder.parameters()} == {torch.float32}
    diff = (low16 - low32).abs().max().item()
    assert 0 < diff < 0.05 * low32.abs().max().item()  # really in bf16, and close
    for a, b in zip(low32 > 0, low16 > 0):
        for m, n in zip(a, b):
            assert mask_iou(m, n) > 0.97
    assert (iou16 - iou32).abs().max().item() < 0.02


@torch.inference_mode()
def test_bf16_decoder_for_sam2_keeps_object_scores():
    model = randomize_(swiftsam.build("sam2.1-hiera-tiny", input_size=256, depth=(1, 1, 1, 1)), 0).eval()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    fp32, bf16 = get_engine("torch", model), get_engine("torch", model, decoder_dtype="bf16")
    feats = fp32.encode(x)
    coords, labels = torch.tensor([[[100.0, 80.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    mask, has = torch.zeros(1, 1, 64, 64), torch.zeros(1)
    out32 = fp32.decode(feats, coords, labels, mask, has)
    out16 = bf16.decode(feats, coords, labels, mask, has)
    assert len(out32) == len(out16) == 3 and all(t.dtype == torch.float32 for t in out16)
    assert mask_iou(out32[0][0, 0] > 0, out16[0][0, 0] > 0) > 0.95
    assert abs(out32[2] - out16[2]).max().item() < 0.1  # object-score logit


def test_decoder_follows_the_engine_precision_unless_named(mobilesam):
    """As the authors' code under autocast: a bf16 engine runs its decoder in bf16 too."""
    assert get_engine("torch", mobilesam, dtype="bf16")._decoder.dtype == torch.bfloat16
    assert get_engine("torch", mobilesam, dtype="bf16", channels_last=False).describe().startswith("torch[bf16, folded_bn]")
    kept = get_engine("torch", mobilesam, dtype="bf16", decoder_dtype="fp32")
    assert kept._decoder.dtype == torch.float32 and "decoder fp32" in kept.describe()
    assert get_engine("torch", mobilesam)._decoder.dtype == torch.float32


def test_decoder_dtype_errors(mobilesam):
    with pytest.raises(EngineError, match="decoder_dtype must be one of"):
        get_engine("torch", mobilesam, decoder_dtype="int8")
    from swiftsam.modeling.quant.layers import QuantLinear

    quantized = randomize_(swiftsam.build("mobilesam"), 0).eval()
    lin = quantized.mask_decoder.iou_prediction_head.layers[0]
    twin = QuantLinear(lin.in_features, lin.out_features)
    twin.load_state_dict(lin.state_dict(), strict=False)
    quantized.mask_decoder.iou_prediction_head.layers[0] = twin
    with pytest.raises(EngineError, match="quantized .*QuantLinear.*float32 only"):
        get_engine("torch", quantized, decoder_dtype="bf16")
    PromptDecoder(quantized)  # float32 is fine


def test_predictor_with_a_bf16_decoder_matches_fp32_on_a_real_model():
    """The bundled trained model on a real image: the same masks within a few boundary pixels."""
    image = test_image()
    a, b = Predictor(engine="torch"), Predictor(engine="torch", decoder_dtype="bf16")
    boxes = np.array([[40, 30, 200, 180], [100, 60, 300, 220]], dtype=np.float32)
    for p in (a, b):
        p.set_image(image)
    ma, sa, _ = a.predict_batch(boxes=boxes, multimask_output=False)
    mb, sb, _ = b.predict_batch(boxes=boxes, multimask_output=False)
    for m, n in zip(torch.from_numpy(ma), torch.from_numpy(mb)):
        assert mask_iou(m[0], n[0]) > 0.97
    assert np.abs(sa - sb).max() < 0.02


def test_dense_position_encoding_is_cached_outside_autograd_and_follows_the_weights(mobilesam):
    pe = swiftsam.build("mobilesam").prompt_encoder
    with torch.no_grad():
        first = pe.get_dense_pe()
        assert pe.get_dense_pe().data_ptr() == first.data_ptr()  # kept
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)  # an in-place update
        second = pe.get_dense_pe()
    assert second.data_ptr() != first.data_ptr() and not torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(second, pe.pe_layer._grid(pe.image_embedding_size).unsqueeze(0))
    # with autograd on (training), computed afresh every call
    assert pe.get_dense_pe().data_ptr() != pe.get_dense_pe().data_ptr()


needs_bf16_openvino = pytest.mark.skipif(
    not (have("openvino") and have("onnx")) or "BF16" not in (
        __import__("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") if have("openvino") else []),
    reason="openvino with bf16 kernels on this CPU is needed")


@needs_bf16_openvino
@torch.inference_mode()
def test_openvino_bf16_decoder_is_close_to_fp32():
    model = swiftsam.build("nanosam-r18", input_size=256)
    model = randomize_(model, 0).eval()
    h, w = model.prompt_encoder.image_embedding_size
    emb = torch.randn(1, 256, h, w, generator=torch.Generator().manual_seed(1))
    coords, labels, _, has = flat_prompts()
    coords = coords * model.prompt_encoder.input_image_size[0] / 1024
    mask = torch.randn(3, 1, 4 * h, 4 * w, generator=torch.Generator().manual_seed(2))
    fp32 = get_engine("openvino", model, precision="fp32", cache=False)
    bf16 = get_engine("openvino", model, precision="fp32", decoder_precision="bf16", cache=False)
    assert "decoder bf16" in bf16.describe()
    low32, iou32 = fp32.decode(emb, coords, labels, mask, has)
    low16, iou16 = bf16.decode(emb, coords, labels, mask, has)
    assert (low16 - low32).abs().max().item() > 0  # really another precision
    for a, b in zip(low32 > 0, low16 > 0):
        for m, n in zip(a, b):
            assert mask_iou(m, n) > 0.95
    assert get_engine("openvino", model, precision="bf16", cache=False).decoder_precision == "bf16"
    with pytest.raises(EngineError, match="decoder_precision must be fp32 or bf16"):
        get_engine("openvino", model, decoder_precision="int8")


# ----------------------------------------------------------------------------- per-call savings (issue 25)
def test_hypernetwork_stack_matches_each_mlp_and_follows_weight_changes(mobilesam):
    """The hypernetwork heads run as one batched product per layer; the stacked weights are kept between calls
    and re-stacked after a weight change (outside inference mode, where the cache key holds version counters)."""
    import copy

    heads = copy.deepcopy(mobilesam.mask_decoder.output_hypernetworks_mlps)
    tokens = torch.randn(5, len(heads), 256, generator=torch.Generator().manual_seed(2))

    def each(x):
        return torch.stack([mlp(x[:, i]) for i, mlp in enumerate(heads)], dim=1)

    with torch.no_grad():
        assert torch.allclose(heads(tokens), each(tokens), atol=1e-5)
        kept = heads._cache
        assert kept is not None and heads(tokens) is not None and heads._cache is kept  # reused, not re-stacked
        heads[2].layers[1].weight.mul_(-1.5)  # in place: the version counter moves
        assert torch.allclose(heads(tokens), each(tokens), atol=1e-5)
        assert heads._cache is not kept


@torch.inference_mode()
def test_dense_pe_in_the_decoder_dtype_is_the_cast_of_float32(mobilesam):
    pe = mobilesam.prompt_encoder
    f32, b16 = pe.get_dense_pe(), pe.get_dense_pe(torch.bfloat16)
    assert f32.dtype == torch.float32 and b16.dtype == torch.bfloat16
    assert torch.equal(b16, f32.to(torch.bfloat16))
    # both kept (the same memory again), neither evicts the other
    assert pe.get_dense_pe(torch.bfloat16).data_ptr() == b16.data_ptr() and pe.get_dense_pe().data_ptr() == f32.data_ptr()


@torch.inference_mode()
def test_torch_engine_keeps_the_cast_features_of_one_image_only(mobilesam):
    """A bf16 decoder casts an image's features once and reuses them for every prompt, but features of another
    image (another ImageFeatures) are never answered from that cache."""
    from swiftsam.modeling.features import ImageFeatures

    engine = get_engine("torch", mobilesam, decoder_dtype="bf16")
    g = torch.Generator().manual_seed(4)
    a, b = (ImageFeatures.of(torch.randn(1, 256, 64, 64, generator=g)) for _ in range(2))
    prompts = flat_prompts()
    low_a, _ = engine.decode(a, *prompts)
    kept = engine._decoder_input[1]
    assert engine.decode(a, *prompts)[0].equal(low_a) and engine._decoder_input[1] is kept
    low_b, _ = engine.decode(b, *prompts)
    fresh = get_engine("torch", mobilesam, decoder_dtype="bf16")
    assert low_b.equal(fresh.decode(b, *prompts)[0]) and not low_b.equal(low_a)


@torch.inference_mode()
def test_features_from_elsewhere_are_adopted_channels_last(mobilesam):
    """An NCHW embedding (an embedding file, forward_image) is handed to the torch decoder channels-last on a CPU
    (its tokens are then a view), with the same masks as the NCHW embedding through the plain model."""
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(5))
    predictor = Predictor(mobilesam, engine="torch")
    predictor.set_image_embedding(emb, (480, 640))
    assert predictor.features.embedding.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(predictor.features.embedding, emb)
    masks, _, _ = predictor.predict(box=np.array([100, 80, 400, 300]), multimask_output=False)
    other = Predictor(mobilesam, engine="onnxruntime") if have("onnxruntime") else None
    if other is not None:
        other.set_image_embedding(emb, (480, 640))
        assert not other.features.embedding.is_contiguous(memory_format=torch.channels_last)
        masks_ort, _, _ = other.predict(box=np.array([100, 80, 400, 300]), multimask_output=False)
        assert (masks == masks_ort).mean() > 0.999
