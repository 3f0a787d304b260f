"""Geometry shared by every model: resize-longest-side, padding, prompt and mask coordinates.

Two frames matter. The *encoder frame* is the square image the encoder sees (``input_size``:
1024 for SAM, 512 for EfficientViT-SAM L*). The *prompt frame* is the 1024-pixel frame in which
SAM's prompt encoder and mask decoder were trained; prompts are mapped there and masks are
cropped there, whatever the encoder's input size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so that the longer side is ``long_side`` (rounded half up)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an H x W x 3 uint8 image with PIL's bilinear filter (as SAM's reference does)."""
    h, w = resized_shape(image.shape[0], image.shape[1], long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def pil_bilinear_weights(n_in: int | torch.Tensor, n_out: int | torch.Tensor,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """(n_out, n_in) weights of PIL's bilinear resample along one axis (antialiased when shrinking): output i
    is centred at (i + 0.5) * scale in the input; input j weighs max(0, 1 - |j + 0.5 - centre| / max(scale, 1)),
    normalised per output. Sizes may be 0-d tensors, so a traced graph keeps them dynamic."""
    n_in, n_out = torch.as_tensor(n_in), torch.as_tensor(n_out)
    device = torch.device("cpu") if device is None else torch.device(device)
    n_in_f, n_out_f = n_in.to(torch.float32), n_out.to(torch.float32)
    scale = n_in_f / n_out_f
    support = torch.clamp(scale, min=1.0)
    centre = (torch.arange(n_out, dtype=torch.float32, device=device) + 0.5) * scale.to(device)
    j = torch.arange(n_in, dtype=torch.float32, device=device) + 0.5
    w = torch.clamp(1.0 - torch.abs(j[None, :] - centre[:, None]) / support.to(device), min=0.0)
    return w / w.sum(dim=1, keepdim=True)


def resize_pil_bilinear(x: torch.Tensor, size_in, size_out) -> torch.Tensor:
    """C x H x W float (0..255) -> C x h x w as PIL's 8-bit bilinear resize (``resize_longest_side``) computes it,
    in torch on ``x``'s device: horizontally, then vertically, each pass rounded and clipped to 0..255. ``size_in``
    / ``size_out``: (H, W) and (h, w), ints or 0-d tensors (traced graphs)."""
    x = torch.matmul(x, pil_bilinear_weights(size_in[1], size_out[1], x.device).t())
    x = torch.clamp(torch.round(x), 0.0, 255.0)
    x = torch.matmul(pil_bilinear_weights(size_in[0], size_out[0], x.device), x)
    return torch.clamp(torch.round(x), 0.0, 255.0)


def frame_shape(original_size: tuple[int, int], prompt_size: int, geometry: str = "longest_side_pad") -> tuple[int, int]:
    """(h, w) of the image inside the prompt frame: resized longest side (SAM 1), or the whole square (SAM 2)."""
    if geometry == "square":
        return prompt_size, prompt_size
    return resized_shape(original_size[0], original_size[1], prompt_size)


def preprocess_image(image: np.ndarray, spec, device: torch.device | str = "cpu",
                     resize_on_device: bool | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """H x W x 3 uint8 RGB -> (1 x 3 x S x S tensor: resized as ``spec.geometry`` says (``longest_side_pad``:
    the longer side to S, then zero-padded bottom/right; ``square``: to S x S), normalised with the model's
    pixel mean/std; the resized (h, w)). ``spec`` is the model's ``ImageSpec`` (its contract's ``image``): this
    needs no weights, so an exported model preprocesses alike. ``longest_side_pad`` resizes with PIL's bilinear
    filter (as SAM's reference), ``square`` as SAM 2 (``preprocess_square``, always on ``device``).

    ``resize_on_device`` (default: when ``device`` is not the CPU): upload the uint8 image once and resize it on
    ``device`` with PIL's filter rebuilt in torch (``resize_pil_bilinear``), instead of PIL on the host; the
    pixels it gives differ from PIL's by rounding only (``tests/test_device_preprocess.py`` measures it)."""
    s = spec.input_size
    if spec.geometry == "square":
        return preprocess_square(image, spec, device), (s, s)
    if resize_on_device is None:
        resize_on_device = torch.device(device).type != "cpu"
    h, w = resized_shape(image.shape[0], image.shape[1], s)
    if resize_on_device:
        x = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device).permute(2, 0, 1).float()
        if (h, w) != image.shape[:2]:
            x = resize_pil_bilinear(x, image.shape[:2], (h, w))
        x = x[None]
    else:
        resized = resize_longest_side(image, s)
        x = torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(2, 0, 1)[None].float()
    return F.pad(normalize_pixels(x, spec), (0, s - w, 0, s - h)), (h, w)


def normalize_pixels(pixels: torch.Tensor, spec, valid: torch.Tensor | None = None) -> torch.Tensor:
    """B x 3 x S x S uint8 -> float32 normalised with the model's pixel mean and std, on ``pixels``' device (a
    GPU training run normalises there the uint8 batch its loader made; ``spec``: the model's ``ImageSpec``). ``valid`` (B x 2, optional): each image's resized
    (h, w); outside it the result is 0, as ``preprocess_image`` pads after normalising. ``preprocess_image``
    normalises with it too (float input passes through ``.float()`` unchanged)."""
    mean = torch.tensor(spec.pixel_mean, device=pixels.device).view(-1, 1, 1)
    std = torch.tensor(spec.pixel_std, device=pixels.device).view(-1, 1, 1)
    x = (pixels.float() - mean) / std
    if valid is not None:
        valid = valid.to(pixels.device)
        rows = torch.arange(x.shape[-2], device=x.device)[None, :, None] < valid[:, 0, None, None]
        cols = torch.arange(x.shape[-1], device=x.device)[None, None, :] < valid[:, 1, None, None]
        x = x.masked_fill(~(rows & cols)[:, None], 0.0)
    return x


def preprocess_square(image: np.ndarray | torch.Tensor, spec, device: torch.device | str = "cpu") -> torch.Tensor:
    """SAM 2's preprocessing: H x W x 3 uint8 (or B x H x W x 3 of one size) -> B x 3 x S x S: scaled to 0..1,
    resized to S x S (bilinear with antialiasing, as SAM 2's torchvision ``Resize`` of a tensor) and normalised
    with the model's mean / std. Runs on ``device``, so a GPU does the resize."""
    x = (torch.from_numpy(np.array(image, copy=True)) if isinstance(image, np.ndarray) else torch.as_tensor(image)).to(device)
    x = (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2).float() / 255.0
    s = spec.input_size
    if tuple(x.shape[-2:]) != (s, s):
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.pixel_mean, device=x.device).view(-1, 1, 1) / 255.0
    std = torch.tensor(spec.pixel_std, device=x.device).view(-1, 1, 1) / 255.0
    return (x - mean) / std


def _frame_scale(original_size: tuple[int, int], prompt_size: int, geometry: str = "longest_side_pad") -> np.ndarray:
    """(sx, sy) that take original-image pixels into the prompt frame (per axis for ``square``)."""
    old_h, old_w = original_size
    new_h, new_w = frame_shape(original_size, prompt_size, geometry)
    return np.array([new_w / old_w, new_h / old_h])


def to_prompt_frame(coords: np.ndarray, original_size: tuple[int, int], prompt_size: int,
                    geometry: str = "longest_side_pad") -> np.ndarray:
    """Map pixel coordinates (..., 2) as (x, y) in the original image into the prompt frame."""
    return np.asarray(coords, dtype=np.float64) * _frame_scale(original_size, prompt_size, geometry)


def from_prompt_frame(coords: np.ndarray, original_size: tuple[int, int], prompt_size: int,
                      geometry: str = "longest_side_pad") -> np.ndarray:
    """Inverse of :func:`to_prompt_frame`."""
    return np.asarray(coords, dtype=np.float64) / _frame_scale(original_size, prompt_size, geometry)


def postprocess_masks(
    low_res: torch.Tensor, original_size: tuple[int, int], prompt_size: int, geometry: str = "longest_side_pad"
) -> torch.Tensor:
    """Low-resolution logits (B x M x 256 x 256) to logits at the original image size: through the prompt
    frame, cropped to the resized image (``longest_side_pad``), or straight to the image (``square``, as SAM 2)."""
    if geometry == "square":
        return F.interpolate(low_res, original_size, mode="bilinear", align_corners=False)
    masks = F.interpolate(low_res, (prompt_size, prompt_size), mode="bilinear", align_corners=False)
    h, w = resized_shape(original_size[0], original_size[1], prompt_size)
    masks = masks[..., :h, :w]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
