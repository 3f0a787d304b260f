"""Training data: an image folder (distillation) or COCO instances (prompted training), and the order
in which each process sees them.

Every random choice is drawn from a generator seeded by (seed, epoch or step, index), so a sample
is the same whichever process, worker or resumed run produces it: resume is exact by construction.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..image_io import list_images
from ..transforms import normalize_pixels, preprocess_image, resize_longest_side
from .prompts import low_res_targets

if TYPE_CHECKING:
    from ..modeling.sam import ImageSpec

log = logging.getLogger("swiftsam.train")


def training_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image under ``folder``, recursively (SA-1B and COCO layouts), sorted (``image_io.list_images``)."""
    return list_images(folder, recursive=True)


def rng_for(*keys: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(k)) for k in keys])


def crop_box(rng: np.random.Generator, h: int, w: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's region: area fraction in ``scale``, log-uniform aspect ratio in ``ratio``,
    10 tries, then the largest centred crop within the ratio range. Returns (top, left, height, width)."""
    area = h * w
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def encoder_pixels(image: np.ndarray, spec: ImageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 1's geometry (``longest_side_pad``): H x W x 3 uint8 -> (3 x S x S uint8: resized as ``preprocess_image``
    resizes on the CPU (``resize_longest_side``: the longer side to S, PIL's bilinear filter), zero-padded
    bottom / right; the resized (h, w)). ``normalize_pixels`` with that (h, w) gives ``preprocess_image``'s input."""
    s = spec.input_size
    resized = resize_longest_side(image, s)
    h, w = resized.shape[:2]
    out = torch.zeros(3, s, s, dtype=torch.uint8)
    out[:, :h, :w] = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
    return out, torch.tensor([h, w])


class EncoderInputs:
    """The encoder inputs each sample carries for a recipe's models, made in the loader's workers (so the
    training loop only copies a ready batch to the device). ``specs``: role (``student``, ``teacher``) -> that
    model's ``ImageSpec``; ``key[role]`` names the batch entry of its input; models whose inputs would be equal
    share one entry. ``sample(image)`` makes one sample's entries, ``batch_input`` a role's B x 3 x S x S input.

    Images go to each model's input as its ``preprocess`` takes them on the CPU (``preprocess_image``: SAM 1
    resizes the longer side and pads, SAM 2 resizes to the square); with ``crops=True`` (distillation crops) as
    ``DistillImages`` does, resized to S x S with PIL's bilinear filter whatever the geometry.

    ``uint8=False`` (CPU runs): the float32 input, normalised in the worker, one per distinct spec.
    ``uint8=True`` (GPU runs): one 3 x S x S uint8 image per distinct input size, resized (and zero-padded:
    ``encoder_pixels``, with ``KEY_hw``, its resized h, w), a quarter of the bytes to pin and copy;
    ``batch_input`` normalises it on the device to the same values. SAM 2's square resize of ``preprocess_image``
    works in float, so that input stays float32."""

    def __init__(self, specs: dict[str, ImageSpec], uint8: bool = False, crops: bool = False) -> None:
        self.specs, self.crops, self.key, self.uint8 = dict(specs), crops, {}, {}
        made: dict[tuple, str] = {}
        for role, spec in self.specs.items():
            as_uint8 = uint8 and (crops or spec.geometry == "longest_side_pad")
            same = (spec.input_size, spec.geometry) if as_uint8 else (
                spec.input_size, spec.geometry, tuple(spec.pixel_mean), tuple(spec.pixel_std))
            self.key[role] = made.setdefault((as_uint8, same), role)
            self.uint8[role] = as_uint8

    def sample(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """One sample's entries from its H x W x 3 uint8 RGB image (or crop)."""
        out: dict[str, torch.Tensor] = {}
        crop = Image.fromarray(image) if self.crops else None
        resized: dict[int, torch.Tensor] = {}
        for role, key in self.key.items():
            if key != role:
                continue
            spec = self.specs[role]
            if crop is not None:
                s = spec.input_size
                if s not in resized:
                    resized[s] = torch.from_numpy(np.array(crop.resize((s, s), Image.BILINEAR))).permute(2, 0, 1)
                out[key] = resized[s] if self.uint8[role] else normalize_pixels(resized[s][None], spec)[0]
            elif self.uint8[role]:
                out[key], out[f"{key}_hw"] = encoder_pixels(image, spec)
            else:
                out[key] = preprocess_image(image, spec, "cpu")[0][0]
        return out

    def batch_input(self, batch: dict, role: str, rows: list[int] | None = None) -> torch.Tensor:
        """The B x 3 x S x S float input of the model ``role`` for the batch (its ``rows`` only, when given), on
        the device the batch is on."""
        key = self.key[role]
        x = batch[key] if rows is None else batch[key][rows]
        if not self.uint8[role]:
            return x
        valid = batch.get(f"{key}_hw")
        if valid is not None and rows is not None:
            valid = valid[rows]
        return normalize_pixels(x, self.specs[role], valid)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def preprocessed(model, files: Iterable[Path]) -> Iterator[torch.Tensor]:
    """Each file as ``model``'s 1 x 3 x S x S encoder input (quantization calibration: QAT's first ranges,
    ``swiftsam quantize``); an unreadable file is an error naming the file."""
    for path in files:
        try:
            image = read_rgb(path)
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"cannot read calibration image {path}: {e}") from None
        yield model.preprocess(image)[0]


class SkipCounter:
    """Unreadable files: warned about once each, counted, fatal only when none can be read."""

    def __init__(self) -> None:
        self.bad: set[str] = set()

    def skip(self, path: Path, error: Exception) -> None:
        if str(path) not in self.bad:
            self.bad.add(str(path))
            log.warning("skipping unreadable image %s (%s: %s)", path, type(error).__name__, error)


class DistillImages(torch.utils.data.Dataset):
    """Images for encoder distillation: one RandomResizedCrop per (image, view), resized to the
    student's and to the teacher's input sizes (so the two sizes may differ) and normalised with each
    model's own pixel mean and std (``student`` / ``teacher``: the models' ``spec``), in the loader's workers:
    ``inputs`` (``EncoderInputs``) says which batch entry holds each model's input; ``uint8``: uint8 crops,
    normalised on the device (GPU runs).

    With a teacher cache (``cache``: its folder; ``levels``: the names of the teacher's levels in it), each sample's
    ``cached`` is read in the workers too: the teacher's levels for that (image, view) in fp16 (``cache_path``),
    or None when the cache does not have them yet (the recipe then runs the teacher and writes them)."""

    def __init__(self, folder: str | os.PathLike[str], student: ImageSpec, teacher: ImageSpec,
                 scale: tuple[float, float], ratio: tuple[float, float], seed: int, views: int | None,
                 uint8: bool = False, cache: Path | None = None, levels: Sequence[str] = ()) -> None:
        self.files = training_images(folder)
        self.student, self.teacher = student, teacher
        self.inputs = EncoderInputs({"student": student, "teacher": teacher}, uint8, crops=True)
        if cache is not None and not views:
            raise InputError("a teacher cache keeps a number of crops (views) per image: give views >= 1 with it.")
        self.cache, self.levels = cache, tuple(levels)
        self.scale, self.ratio, self.seed, self.views = scale, ratio, seed, views
        self.skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[int, np.ndarray]:
        """The image at ``index``, or the next readable one after it (deterministically)."""
        n = len(self.files)
        for k in range(n):
            i = (index + k) % n
            try:
                return i, read_rgb(self.files[i])
            except (OSError, UnidentifiedImageError, ValueError) as e:
                self.skips.skip(self.files[i], e)
        raise InputError(f"none of the {n} images could be read (e.g. {self.files[0]}); check the folder.")

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, epoch = item
        view = epoch if self.views is None else epoch % self.views  # a cache keeps `views` crops per image
        index, image = self.load(index)
        top, left, ch, cw = crop_box(rng_for(self.seed, index, view), *image.shape[:2], self.scale, self.ratio)
        crop = image[top:top + ch, left:left + cw]
        out = {"requested": item[0], "index": index, "view": view, **self.inputs.sample(crop)}
        if self.cache is not None:
            out["cached"] = self.cached(index, view)
        return out

    def cache_path(self, index: int, view: int) -> Path:
        """The cache file of the teacher's levels for (image ``index``, ``view``)."""
        return self.cache / f"{int(index):08d}_{int(view) % self.views}.pt"

    def cached(self, index: int, view: int) -> tuple[torch.Tensor, ...] | None:
        """The teacher's levels (fp16, in ``levels``' order) that the cache holds for (``index``, ``view``), memory
        mapped; None when it holds none. A file that cannot be read is a miss (rewritten), with a warning."""
        path = self.cache_path(index, view)
        if not path.exists():
            return None
        try:
            saved = torch.load(path, weights_only=True, mmap=True)
            return tuple(saved[name] for name in self.levels)
        except Exception as e:  # noqa: BLE001 -- any damage to one cache file: recompute it
            log.warning("teacher cache file %s cannot be read (%s: %s); the teacher recomputes it", path,
                        type(e).__name__, e)
            return None


class CocoObjects(torch.utils.data.Dataset):
    """COCO images with up to ``objects`` instance masks each (non-crowd, area >= 64 pixels), resized so
    the longest side is ``prompt_size`` (SAM's prompt frame); masks returned in that frame, unpadded.

    Made in the loader's workers besides: with ``inputs`` (``EncoderInputs``), each model's encoder input of the
    prompt-frame image (``image``, which then stays out of the sample); with ``low`` (the decoder's mask-input
    side), ``low_res``: the masks padded to the frame and downsampled (``prompts.low_res_targets``), N x low x low,
    concatenated over the batch."""

    def __init__(self, images: str | os.PathLike[str], annotations: str | os.PathLike[str], prompt_size: int,
                 objects: int, seed: int, inputs: EncoderInputs | None = None, low: int | None = None) -> None:
        from ..eval.dataset import CocoImages

        self.data = CocoImages(images, annotations)
        self.ids = [i for i in self.data.image_ids if self._usable(i)]
        if not self.ids:
            raise InputError(f"{annotations} has no image with a non-crowd instance of area >= 64 pixels.")
        self.prompt_size, self.objects, self.seed = prompt_size, objects, seed
        self.inputs, self.low = inputs, low
        self.skips = SkipCounter()

    def _usable(self, image_id: int) -> list[dict]:
        return [a for a in self.data.annotations(image_id) if not a.get("iscrowd", 0) and a["area"] >= 64]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, epoch = item
        n = len(self.ids)
        for k in range(n):
            i = (index + k) % n
            image_id = self.ids[i]
            try:
                image = read_rgb(self.data.path(image_id))
                break
            except (OSError, UnidentifiedImageError, ValueError) as e:
                self.skips.skip(self.data.path(image_id), e)
        else:
            raise InputError(f"none of the {n} annotated images could be read; check the image folder.")
        anns = self._usable(image_id)
        rng = rng_for(self.seed, epoch, i)
        chosen = rng.choice(len(anns), size=min(self.objects, len(anns)), replace=False)
        resized = resize_longest_side(image, self.prompt_size)
        h, w = resized.shape[:2]
        masks = np.stack([np.asarray(Image.fromarray(self.data.gt_mask(anns[j]).astype(np.uint8) * 255).resize(
            (w, h), Image.NEAREST)) > 127 for j in chosen])
        out = {"requested": index, "index": i, "masks": torch.from_numpy(masks)}
        out.update({"image": resized} if self.inputs is None else self.inputs.sample(resized))
        if self.low is not None:
            out["low_res"] = low_res_targets([out["masks"]], self.prompt_size, self.low)
        return out


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's stacked tensors (``collate``'s: the encoder inputs ``EncoderInputs`` made, a prompted batch's
    ``low_res`` targets) on ``device``: asynchronous copies from the loader's pinned memory when it is a GPU.
    Lists (the masks of prompted recipes, which the recipe reads on the host) stay as they are."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# per-sample tensors of N_i rows (one per object) that a batch concatenates
CONCATENATED = ("low_res",)


def collate(items: list[dict]) -> dict:
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in CONCATENATED:
            out[key] = torch.cat(values)
        elif isinstance(values[0], torch.Tensor) and key != "masks" and values[0].ndim > 0:
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


class StepSampler(torch.utils.data.Sampler):
    """The batches of one process, from ``start_step`` on: step s of rank r takes positions
    (s * world + r) * batch ... + batch of an endless stream that walks a fresh seeded permutation of
    the dataset every epoch. Yields lists of (index, epoch) for the dataset."""

    def __init__(self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0,
                 steps: int | None = None) -> None:
        self.size, self.batch, self.seed = size, batch, seed
        self.rank, self.world, self.start_step, self.steps = rank, world, start_step, steps
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: rng_for(self.seed, 7919, epoch).permutation(self.size)}
        return self._perms[epoch]

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        first = (step * self.world + self.rank) * self.batch
        out = []
        for p in range(first, first + self.batch):
            epoch = p // self.size
            out.append((int(self._perm(epoch)[p % self.size]), epoch))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            yield self.batch_at(step)
            step += 1

    def __len__(self) -> int:
        return (self.steps - self.start_step) if self.steps is not None else 2**31


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
