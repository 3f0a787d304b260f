"""Prompt sampling from ground-truth masks, in SAM's flat prompt format (prompt frame coordinates).

- ``first_prompts``: per object, a box (the mask's bounding box with corner jitter) or one positive
  point drawn inside the mask, half and half;
- ``error_clicks``: one click per object drawn from the error region between the current prediction
  and the ground truth: a positive click in a missed pixel or a negative click in a false one,
  whichever region is larger (SAM's and EfficientViT-SAM's iterative clicks; TinySAM's hard prompts).
"""

from __future__ import annotations

import numpy as np
import torch

from ..modeling.prompt_decoder import PAD_LABEL


def _kth_pixels(masks: torch.Tensor, k: torch.Tensor, rows: torch.Tensor | None = None,
                batched: bool | None = None) -> torch.Tensor:
    """(x, y) pixel centres (N x 2) of the ``k[i]``-th set pixel of each N x H x W bool mask, in ``torch.nonzero``'s
    row-major order: the row from running counts of set pixels per row (``rows``: ``masks.sum(2)``, when known),
    then the column within it (an empty mask gives its bottom-right pixel). On a CPU one ``nonzero`` per mask is
    faster (measured: 1024 x 1024 masks), elsewhere the whole batch runs as tensors, with no host sync per mask
    (``batched``: which, when not by device)."""
    n, h, w = masks.shape
    if not (masks.device.type != "cpu" if batched is None else batched):
        out = torch.full((n, 2), 0.0)
        for i, (m, j) in enumerate(zip(masks, k.tolist())):
            ys, xs = torch.nonzero(m, as_tuple=True)
            out[i] = torch.stack([xs[j], ys[j]]).float() if len(ys) else torch.tensor([w - 1.0, h - 1.0])
        return out + 0.5
    k = k.to(masks.device, torch.int32)
    rows = (_row_counts(masks) if rows is None else rows).cumsum(1, dtype=torch.int32)
    row = torch.searchsorted(rows, (k + 1)[:, None]).squeeze(1).clamp(max=h - 1)
    before = torch.where(row > 0, rows.gather(1, (row - 1).clamp(min=0)[:, None]).squeeze(1), 0)
    line = masks[torch.arange(n, device=masks.device), row].cumsum(1, dtype=torch.int32)  # N x W
    col = torch.searchsorted(line, (k - before + 1)[:, None]).squeeze(1).clamp(max=w - 1)
    return torch.stack([col, row], -1).float() + 0.5


def _boxes(masks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The bounding boxes (N x 4, x0, y0, x1, y1, x1 / y1 one past the last pixel) of N x H x W bool masks whose
    set pixels per row are ``rows`` (N x H)."""
    h, w = masks.shape[-2:]
    rows, cols = rows > 0, masks.any(1)  # N x H, N x W
    y0, x0 = rows.int().argmax(1), cols.int().argmax(1)
    y1, x1 = h - rows.flip(1).int().argmax(1), w - cols.flip(1).int().argmax(1)
    return torch.stack([x0, y0, x1, y1], -1).float()


def _row_counts(masks: torch.Tensor) -> torch.Tensor:
    """Set pixels per row (N x H int32) of N x H x W bool masks."""
    return masks.sum(2, dtype=torch.int32)


def first_prompts(masks: torch.Tensor, gen: torch.Generator, jitter: float, box_fraction: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """masks N x H x W (bool, prompt frame) -> coords N x 2 x 2, labels N x 2 (a box, or a point + pad), on the
    masks' device. The random draws come from ``gen`` (a CPU generator) object by object: whether a box, then
    its corner noise or the index of its point among the mask's pixels; boxes and points are read from the masks
    as tensors (``_boxes``, ``_kth_pixels``)."""
    n, h, w = masks.shape
    rows = _row_counts(masks)
    sizes = rows.sum(1).tolist()  # the one copy to the host: N numbers
    is_box, noise, k = torch.zeros(n, dtype=torch.bool), torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)
    for i in range(n):
        if float(torch.rand(1, generator=gen)) < box_fraction:
            is_box[i] = True
            noise[i] = torch.rand(4, generator=gen) * 2 - 1
        elif sizes[i]:  # an empty mask (none reach here from the datasets): no draw
            k[i] = int(torch.randint(sizes[i], (1,), generator=gen))
    dev = masks.device
    box = _boxes(masks, rows)
    bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    box = box + noise.to(dev) * jitter * torch.stack([bw, bh, bw, bh], -1)
    box = torch.minimum(box.clamp(min=0), torch.tensor([w, h, w, h], dtype=box.dtype, device=dev))
    point = torch.cat([_kth_pixels(masks, k, rows).to(dev), torch.zeros(n, 2, device=dev)], 1)  # point, then pad
    is_box = is_box.to(dev)
    coords = torch.where(is_box[:, None], box, point).reshape(n, 2, 2)
    labels = torch.where(is_box[:, None], torch.tensor([2.0, 3.0], device=dev),
                         torch.tensor([1.0, float(PAD_LABEL)], device=dev))
    return coords, labels


def error_clicks(predicted: torch.Tensor, masks: torch.Tensor, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """predicted, masks: N x H x W bool -> one click per object (coords N x 1 x 2, labels N x 1), on the masks'
    device. An object predicted perfectly gets a positive click inside its mask. The draws come from ``gen``
    object by object, as in ``first_prompts``."""
    predicted = predicted.to(masks.device)
    missed, extra = masks & ~predicted, predicted & ~masks
    rows = [_row_counts(t) for t in (missed, extra, masks)]
    sizes = torch.stack([r.sum(1) for r in rows], 1).tolist()
    n = len(masks)
    positive, in_mask, k = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long)
    for i, (n_missed, n_extra, n_mask) in enumerate(sizes):
        positive[i] = n_missed >= n_extra
        region = n_missed if positive[i] else n_extra
        in_mask[i] = region == 0  # nothing wrong: a click inside the mask
        size = n_mask if in_mask[i] else region
        if size:
            k[i] = int(torch.randint(size, (1,), generator=gen))
    dev = masks.device
    positive, in_mask = positive.to(dev), in_mask.to(dev)

    def pick(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # the mask / missed / extra one
        shape = (-1,) + (1,) * (a.dim() - 1)
        return torch.where(in_mask.view(shape), a, torch.where(positive.view(shape), b, c))

    source = pick(masks, missed, extra)
    coords = _kth_pixels(source, k, pick(rows[2], rows[0], rows[1])).to(dev)[:, None]
    labels = (positive | in_mask).float()[:, None]
    return coords, labels


def low_res_targets(masks: list[torch.Tensor], prompt_size: int, low: int = 256) -> torch.Tensor:
    """Per-image masks (N_i x h x w, prompt frame, unpadded) -> padded, downsampled N x low x low float targets."""
    out = []
    for m in masks:
        padded = torch.zeros(len(m), prompt_size, prompt_size)
        padded[:, : m.shape[1], : m.shape[2]] = m.float()
        out.append(torch.nn.functional.interpolate(padded[:, None], (low, low), mode="area")[:, 0])
    return torch.cat(out)


def as_generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))
