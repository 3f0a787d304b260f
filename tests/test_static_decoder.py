"""The decoder on static shapes (engines.static_decoder): bucketed prompt counts give the unpadded outputs, and the
decoder traces as one graph (nothing a CUDA graph capture forbids: no host read of a device value, no branch on
one) once it is told whether any prompt has a mask input."""

from __future__ import annotations

import pytest
import torch

import swiftsam
from swiftsam.engines import get_engine
from swiftsam.engines.static_decoder import BUCKETS, StaticShapeDecoder, bucket_for, pad_rows
from swiftsam.modeling.features import ImageFeatures
from swiftsam.modeling.prompt_decoder import PromptDecoder
from swiftsam.prompts import PromptBatch


@pytest.fixture(scope="module")
def sam1():
    torch.manual_seed(0)
    return swiftsam.build("nanosam-r18", input_size=256).eval()


@pytest.fixture(scope="module")
def sam2():
    torch.manual_seed(0)
    return swiftsam.build("sam2.1-hiera-tiny").eval()


def features(model, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, f.channels, f.size, f.size, generator=g) for f in model.contract.features]


def prompts(model, n: int, seed: int = 1, masks: bool = False) -> PromptBatch:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 600
    boxes = torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 300], 1)
    size = tuple(model.contract.mask_input_size)
    mask = torch.randn(n, 1, *size, generator=g) if masks else None
    batch = PromptBatch.from_frame(model.contract, None, None, boxes, mask)
    if masks:  # every other prompt without its mask input
        batch.has_mask_input[1::2] = 0
    return batch


def test_buckets():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    with pytest.raises(ValueError, match="chunks"):
        bucket_for(BUCKETS[-1] + 1)
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(pad_rows(t, 5), torch.tensor([[0, 1], [2, 3], [4, 5], [4, 5], [4, 5.0]]))
    assert pad_rows(t, 3) is t


@pytest.mark.parametrize("family", ["sam1", "sam2"])
@pytest.mark.parametrize("n,per_prompt,masks", [(3, False, False), (7, False, True), (5, True, False)])
def test_bucketed_equals_unpadded(family, n, per_prompt, masks, request):
    model = request.getfixturevalue(family)
    decoder = PromptDecoder(model)
    seen = []

    def run(inputs, mask_prompts):
        seen.append((inputs[1].shape[0], inputs[0].shape[0], mask_prompts))
        return decoder(*inputs, mask_prompts=mask_prompts)

    levels = features(model, n if per_prompt else 1)
    batch = prompts(model, n, masks=masks)
    with torch.inference_mode():
        want = decoder(levels[0], *batch.tensors(), *levels[1:])
        # buckets up to 4 (64 by default): 7 prompts go in chunks of 4 and 3 (padded to 4)
        got = StaticShapeDecoder(run, buckets=(1, 2, 4))(levels[0], *batch.tensors(), *levels[1:])
    assert len(got) == len(want) == (3 if family == "sam2" else 2)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-5)
    sizes = [min(4, n - start) for start in range(0, n, 4)]
    chunks = [(bucket_for(k, (1, 2, 4)), bucket_for(k, (1, 2, 4)) if per_prompt else 1, masks) for k in sizes]
    assert seen == chunks


@pytest.mark.parametrize("family", ["sam1", "sam2"])
def test_decoder_traces_as_one_graph(family, request):
    """What CUDA graph capture needs, checked on a CPU: dynamo finds no graph break (a break is a host read of a
    device value or a branch on one) when the caller says whether masks are given; it finds one when not."""
    model = request.getfixturevalue(family)
    decoder = PromptDecoder(model)
    levels = features(model)
    batch = prompts(model, 2)
    breaks = {}
    for flag in (False, None):
        torch._dynamo.reset()
        with torch.inference_mode():
            explained = torch._dynamo.explain(lambda *a: decoder(*a, mask_prompts=flag))(
                levels[0], *batch.tensors(), *levels[1:])
        breaks[flag] = explained.graph_break_count
    torch._dynamo.reset()
    assert breaks[False] == 0 < breaks[None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("family", ["sam1", "sam2"])
def test_cuda_graph_decoder_matches_eager(family, request):
    model = request.getfixturevalue(family).to("cuda")
    eager, graphs = get_engine("torch", model), get_engine("torch", model, cuda_graphs=True)
    levels = ImageFeatures.of([t.cuda() for t in features(model)])
    cases = ((1, False), (3, True), (70, False), (3, False))
    for round in range(2):
        for n, masks in cases:
            batch = prompts(model, n, masks=masks).to("cuda")
            want = eager.decode(levels, *batch.tensors())
            got = graphs.decode(levels, *batch.tensors())
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
        # the model's own caches replaced (a call outside inference mode): the graphs read their private copy's
        with torch.no_grad():
            PromptDecoder(model)(levels.embedding, *prompts(model, 2).to("cuda").tensors(), *levels.high_res)
    runner = graphs._graphs.run
    # one graph per bucket and mask flag: 1; 4 with masks; 64 and 8; 4 without masks
    assert len(runner.graphs) == 5 and not runner.failed
    # features per prompt (an image batch) decode eagerly, with the same results
    per_prompt = ImageFeatures.of([t.expand(3, -1, -1, -1).contiguous() for t in levels.levels])
    batch = prompts(model, 3).to("cuda")
    for g, w in zip(graphs.decode(per_prompt, *batch.tensors()), eager.decode(per_prompt, *batch.tensors())):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert len(runner.graphs) == 5


def test_cached_tensors_finds_what_a_graph_would_read(sam2):
    """The caches a captured graph reads by address, found so that its holder keeps them alive."""
    decoder = PromptDecoder(sam2)
    levels = features(sam2)
    with torch.inference_mode():
        decoder(levels[0], *prompts(sam2, 2).tensors(), *levels[1:])
    from swiftsam.engines.static_decoder import cached_tensors

    found = {t.data_ptr() for t in cached_tensors(decoder)}
    pe = sam2.prompt_encoder.pe_layer._cache
    stacked = [m._cache for m in sam2.mask_decoder.modules() if type(m).__name__ == "MLPStack"]
    assert pe and stacked and all(s is not None for s in stacked)
    assert {t.data_ptr() for t in pe.values()} <= found
    assert {w.data_ptr() for s in stacked for pair in s[1] for w in pair} <= found
    assert not {p.data_ptr() for p in decoder.parameters()} & found  # parameters are the module's own
