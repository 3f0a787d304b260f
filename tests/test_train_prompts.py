"""Training prompts sampled as tensors (train.prompts): the same prompts, draw for draw, as sampling object by
object with ``torch.nonzero`` (the reference below, the recipes' earlier code), and where each one lands."""

from __future__ import annotations

import pytest
import torch

from swiftsam.modeling.prompt_decoder import PAD_LABEL
from swiftsam.train.prompts import as_generator, error_clicks, first_prompts


def _pick(mask, gen):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return None
    k = int(torch.randint(len(ys), (1,), generator=gen))
    return torch.stack([xs[k], ys[k]]).float() + 0.5


def reference_first(masks, gen, jitter, box_fraction=0.5):
    coords, labels = torch.zeros(len(masks), 2, 2), torch.full((len(masks), 2), float(PAD_LABEL))
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if float(torch.rand(1, generator=gen)) < box_fraction:
            x0, x1, y0, y1 = xs.min().float(), xs.max().float() + 1, ys.min().float(), ys.max().float() + 1
            bw, bh = x1 - x0, y1 - y0
            noise = (torch.rand(4, generator=gen) * 2 - 1) * jitter * torch.stack([bw, bh, bw, bh])
            box = torch.stack([x0, y0, x1, y1]) + noise
            h, w = m.shape
            box = torch.stack([box[0].clamp(0, w), box[1].clamp(0, h), box[2].clamp(0, w), box[3].clamp(0, h)])
            coords[i], labels[i] = box.reshape(2, 2), torch.tensor([2.0, 3.0])
        else:
            coords[i, 0], labels[i, 0] = _pick(m, gen), 1.0
    return coords, labels


def reference_clicks(predicted, masks, gen):
    coords, labels = torch.zeros(len(masks), 1, 2), torch.ones(len(masks), 1)
    for i, (p, g) in enumerate(zip(predicted, masks)):
        missed, extra = g & ~p, p & ~g
        positive = int(missed.sum()) >= int(extra.sum())
        region = missed if positive else extra
        coords[i, 0] = _pick(region, gen) if bool(region.any()) else _pick(g, gen)
        labels[i, 0] = 1.0 if positive or not bool(region.any()) else 0.0
    return coords, labels


def blobs(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random masks: rectangles and noise, one touching the frame's corner, one a single pixel."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = int(torch.randint(h - 2, (1,), generator=g)), int(torch.randint(w - 2, (1,), generator=g))
        masks[i, y0:y0 + int(torch.randint(1, h - y0, (1,), generator=g)),
              x0:x0 + int(torch.randint(1, w - x0, (1,), generator=g))] = True
        masks[i] |= torch.rand(h, w, generator=g) > 0.97
    masks[0, :5, :7] = True
    masks[1] = False
    masks[1, h - 1, w - 1] = True
    return masks


@pytest.mark.parametrize("shape", [(12, 64, 48), (5, 33, 70)])
def test_prompts_equal_the_object_by_object_reference(shape):
    masks = blobs(*shape, seed=shape[1])
    for seed in range(4):
        got = first_prompts(masks, as_generator(seed, 1), jitter=0.1)
        want = reference_first(masks, as_generator(seed, 1), jitter=0.1)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        predicted = blobs(*shape, seed=seed + 100)
        predicted[2] = masks[2]  # one perfect prediction: a click inside the mask
        got = error_clicks(predicted, masks, as_generator(seed, 2))
        want = reference_clicks(predicted, masks, as_generator(seed, 2))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_prompts_land_where_they_should():
    masks = blobs(16, 40, 50, seed=3)
    coords, labels = first_prompts(masks, as_generator(0, 0), jitter=0.0)
    boxes = labels[:, 0] == 2
    assert boxes.any() and (~boxes).any()
    for i in range(len(masks)):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        if boxes[i]:  # no jitter: the mask's own bounding box
            assert coords[i].flatten().tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        else:
            x, y = (coords[i, 0] - 0.5).long().tolist()
            assert masks[i, y, x] and labels[i].tolist() == [1.0, PAD_LABEL]
    predicted = torch.zeros_like(masks)
    coords, labels = error_clicks(predicted, masks, as_generator(0, 0))
    assert labels.eq(1).all()  # all missed: positive clicks inside each mask
    for i, (x, y) in enumerate((coords[:, 0] - 0.5).long().tolist()):
        assert masks[i, y, x]
    coords, labels = error_clicks(torch.ones_like(masks), masks, as_generator(0, 0))
    for i, (x, y) in enumerate((coords[:, 0] - 0.5).long().tolist()):  # mostly false positives: negative clicks
        assert (labels[i] == 0) == (not masks[i, y, x])


def test_kth_pixels_as_tensors_equal_nonzero():
    """The batch path (an accelerator's) against the per-mask nonzero one (a CPU's), on the CPU."""
    from swiftsam.train import prompts

    masks = blobs(9, 37, 29, seed=5)
    masks[3] = False  # empty: the bottom-right pixel
    sizes = masks.flatten(1).sum(1)
    k = (torch.rand(9, generator=torch.Generator().manual_seed(0)) * sizes).long()
    want = prompts._kth_pixels(masks, k, batched=False)
    assert torch.equal(prompts._kth_pixels(masks, k, batched=True), want)
    assert torch.equal(prompts._kth_pixels(masks, k, masks.sum(2, dtype=torch.int32), batched=True), want)
    assert want[3].tolist() == [28.5, 36.5]
