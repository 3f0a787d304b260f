"""Our models against the authors' reference code: same keys and shapes, same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import swiftsam
from swiftsam.zoo.checkpoint import load_checkpoint
from tests.conftest import randomize_
from tests.reference_models import reference_efficientvit, reference_mobilesam, reference_sam_vit

REFERENCES = {
    "sam-vit-b": lambda **kw: reference_sam_vit("b", **kw),
    "sam-vit-l": lambda **kw: reference_sam_vit("l", **kw),
    "sam-vit-h": lambda **kw: reference_sam_vit("h", **kw),
    "mobilesam": reference_mobilesam,
    "tinysam": reference_mobilesam,  # TinySAM's architecture is MobileSAM's
    "tinysam-1.0": reference_mobilesam,
    **{f"efficientvit-sam-{v}": (lambda _v=v, **kw: reference_efficientvit(_v, **kw))
       for v in ("l0", "l1", "l2", "xl0", "xl1")},
}


def shapes(model: torch.nn.Module, ignore: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not (ignore and k.startswith(ignore))}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_state_dict_keys_and_shapes_match_reference(name):
    entry = swiftsam.get_entry(name)
    with torch.device("meta"):
        ours = swiftsam.build(name)
    if entry.family == "tinyvit":  # the authors' TinyViT calls .item() while building: no meta device
        ref = REFERENCES[name]()
    else:
        with torch.device("meta"):
            ref = REFERENCES[name]()
    ref_shapes = shapes(ref, entry.ignore_keys)
    assert shapes(ours) == ref_shapes
    if entry.ignore_keys:  # the authors' unused classifier is really there, and only that is dropped
        dropped = set(shapes(ref)) - set(ref_shapes)
        assert dropped and all(k.startswith(entry.ignore_keys) for k in dropped)


# (name, reduced-depth kwargs for ours, kwargs for the reference)
NUMERIC_CASES = [
    ("sam-vit-b", {"depth": 4}, {"depth": 4}),
    ("sam-vit-l", {"depth": 3}, {"depth": 3}),
    ("sam-vit-h", {"depth": 2}, {"depth": 2}),
    ("mobilesam", {}, {}),
    ("efficientvit-sam-l0", {}, {}),
    ("efficientvit-sam-l1", {}, {}),
    ("efficientvit-sam-l2", {}, {}),
    ("efficientvit-sam-xl0", {"depth_scale": 0.34}, {"depth_scale": 0.34}),
    ("efficientvit-sam-xl1", {"depth_scale": 0.17}, {"depth_scale": 0.17}),
]


def paired(name: str, ours_kw: dict, ref_kw: dict, seed: int = 0):
    ref = randomize_(REFERENCES[name](**ref_kw), seed).eval()  # eval() after randomising (TinyViT caches biases)
    ours = swiftsam.build(name, **ours_kw)
    load_checkpoint(ours, swiftsam.get_entry(name), ref.state_dict(), "reference")
    return ours.eval(), ref


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name,ours_kw,ref_kw", NUMERIC_CASES, ids=[c[0] for c in NUMERIC_CASES])
def test_embeddings_and_decoder_match_reference(name, ours_kw, ref_kw):
    ours, ref = paired(name, ours_kw, ref_kw)
    s = ours.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb_ours, emb_ref = ours.image_encoder(x), ref.image_encoder(x)
        assert emb_ours.shape == (1, 256, 64, 64)
        assert max_abs(emb_ours, emb_ref) < 1e-4

        g = torch.Generator().manual_seed(2)
        pts = torch.rand(5, 3, 2, generator=g) * 1000
        labels = torch.randint(0, 2, (5, 3), generator=g)
        boxes = torch.sort(torch.rand(5, 2, 2, generator=g) * 1000, dim=1).values.reshape(5, 4)
        masks = torch.randn(5, 1, 256, 256, generator=g)
        for points, bx, mk in [((pts, labels), None, None), (None, boxes, None), ((pts, labels), boxes, masks)]:
            for multimask in (True, False):
                lo, io = ours.decode(emb_ref, points, bx, mk, multimask)
                sp, de = ref.prompt_encoder(points=points, boxes=bx, masks=mk)
                lr, ir = ref.mask_decoder(image_embeddings=emb_ref, image_pe=ref.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sp, dense_prompt_embeddings=de,
                                          multimask_output=multimask)
                assert lo.shape == lr.shape and io.shape == ir.shape
                assert max_abs(lo, lr) < 1e-4
                assert max_abs(io, ir) < 1e-4


def test_efficientvit_l_preprocessing_matches_reference():
    """L models see a 512 image but prompts and masks live in the 1024 frame, as in the authors' code."""
    ours, ref = paired("efficientvit-sam-l0", {}, {})
    from tests.conftest import test_image

    img = test_image(300, 400)
    x_ours, hw = ours.preprocess(img)
    x_ref = ref.transform(img).unsqueeze(0)
    assert hw == (384, 512)
    assert max_abs(x_ours, x_ref) < 1e-4
