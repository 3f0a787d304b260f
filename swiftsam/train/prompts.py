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


def _pick_pixel(mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return None
    k = int(torch.randint(len(ys), (1,), generator=gen))
    return torch.stack([xs[k], ys[k]]).float() + 0.5  # pixel centre, (x, y)


def first_prompts(masks: torch.Tensor, gen: torch.Generator, jitter: float, box_fraction: float = 0.5
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """masks N x H x W (bool, prompt frame) -> coords N x 2 x 2, labels N x 2 (a box, or a point + pad)."""
    coords = torch.zeros(len(masks), 2, 2)
    labels = torch.full((len(masks), 2), float(PAD_LABEL))
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if float(torch.rand(1, generator=gen)) < box_fraction:
            x0, x1, y0, y1 = xs.min().float(), xs.max().float() + 1, ys.min().float(), ys.max().float() + 1
            bw, bh = x1 - x0, y1 - y0
            noise = (torch.rand(4, generator=gen) * 2 - 1) * jitter * torch.stack([bw, bh, bw, bh])
            box = torch.stack([x0, y0, x1, y1]) + noise
            h, w = m.shape
            box = torch.stack([box[0].clamp(0, w), box[1].clamp(0, h), box[2].clamp(0, w), box[3].clamp(0, h)])
            coords[i] = box.reshape(2, 2)
            labels[i] = torch.tensor([2.0, 3.0])
        else:
            coords[i, 0] = _pick_pixel(m, gen)
            labels[i, 0] = 1.0
    return coords, labels


def error_clicks(predicted: torch.Tensor, masks: torch.Tensor, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """predicted, masks: N x H x W bool -> one click per object (coords N x 1 x 2, labels N x 1).
    An object predicted perfectly gets a positive click inside its mask."""
    coords = torch.zeros(len(masks), 1, 2)
    labels = torch.ones(len(masks), 1)
    for i, (p, g) in enumerate(zip(predicted, masks)):
        missed, extra = g & ~p, p & ~g
        positive = int(missed.sum()) >= int(extra.sum())
        region = missed if positive else extra
        point = _pick_pixel(region, gen) if bool(region.any()) else _pick_pixel(g, gen)
        coords[i, 0] = point
        labels[i, 0] = 1.0 if positive or not bool(region.any()) else 0.0
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
