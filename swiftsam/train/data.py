"""Training data: an image folder (distillation) or COCO instances (prompted training), and the order
in which each process sees them.

Every random choice is drawn from a generator seeded by (seed, epoch or step, index), so a sample
is the same whichever process, worker or resumed run produces it: resume is exact by construction.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..image_io import list_images
from ..transforms import resize_longest_side

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


def normalize(image: np.ndarray, spec: ImageSpec) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 3 x H x W float, normalised with the model's pixel mean and std (``spec``:
    ``model.spec``), as ``Sam.preprocess`` does."""
    mean, std = np.asarray(spec.pixel_mean, dtype=np.float32), np.asarray(spec.pixel_std, dtype=np.float32)
    x = (image.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


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
    model's own pixel mean and std (``student`` / ``teacher``: the models' ``spec``)."""

    def __init__(self, folder: str | os.PathLike[str], student: ImageSpec, teacher: ImageSpec,
                 scale: tuple[float, float], ratio: tuple[float, float], seed: int, views: int | None) -> None:
        self.files = training_images(folder)
        self.student, self.teacher = student, teacher
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
        crop = Image.fromarray(image[top:top + ch, left:left + cw])
        s_size, t_size = self.student.input_size, self.teacher.input_size
        student = np.asarray(crop.resize((s_size,) * 2, Image.BILINEAR))
        teacher = student if t_size == s_size else np.asarray(crop.resize((t_size,) * 2, Image.BILINEAR))
        return {"requested": item[0], "index": index, "view": view, "student": normalize(student, self.student),
                "teacher": normalize(teacher, self.teacher)}


class CocoObjects(torch.utils.data.Dataset):
    """COCO images with up to ``objects`` instance masks each (non-crowd, area >= 64 pixels), resized so
    the longest side is ``prompt_size`` (SAM's prompt frame); masks returned in that frame, unpadded."""

    def __init__(self, images: str | os.PathLike[str], annotations: str | os.PathLike[str], prompt_size: int,
                 objects: int, seed: int) -> None:
        from ..eval.dataset import CocoImages

        self.data = CocoImages(images, annotations)
        self.ids = [i for i in self.data.image_ids if self._usable(i)]
        if not self.ids:
            raise InputError(f"{annotations} has no image with a non-crowd instance of area >= 64 pixels.")
        self.prompt_size, self.objects, self.seed = prompt_size, objects, seed
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
        return {"requested": index, "index": i, "image": resized, "masks": torch.from_numpy(masks)}


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's stacked tensors (``collate``'s, e.g. a distillation batch's ``student`` / ``teacher`` images)
    on ``device``: asynchronous copies from the loader's pinned memory when it is a GPU. Lists (the images and
    masks of prompted recipes, which the recipe reads on the host) stay as they are."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate(items: list[dict]) -> dict:
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor) and key != "masks" and values[0].ndim > 0:
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
