"""Top-level entry points: build a zoo model, or load it with its official weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import CheckpointError, DownloadError
from .modeling.sam import Sam
from .zoo import get_entry
from .zoo.checkpoint import load_checkpoint, read_state_dict
from .zoo.hub import cached_path, download

DEFAULT_MODEL = "swiftsam-r18"  # the project's own student: its weights ship with the package


def build(name: str, **kwargs) -> Sam:
    """A zoo model with freshly initialised (random) weights, in eval mode."""
    entry = get_entry(name)
    model = entry.build(**kwargs)
    model.zoo_name = entry.name
    model.multimask_only = entry.multimask_only
    model.box_mask_prior = entry.box_mask_prior
    return model.eval()


def load(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    allow_download: bool = True,
    allow_pickle: bool = False,
    progress: bool = True,
    **kwargs,
) -> Sam:
    """Load zoo model ``name`` with its official checkpoint (downloaded and verified on first use)
    or with ``checkpoint`` (a local file in the authors' format or ours).

    ``allow_pickle=True`` reads checkpoints that contain pickled objects; use it only for files you trust.
    Extra keyword arguments go to the model's builder (e.g. ``input_size=512`` for NanoSAM students).
    """
    entry = get_entry(name)
    if checkpoint is None and entry.bundled is not None:  # the project's own models ship in the package
        from .zoo.bundled import read_bundled

        model = build(entry.name, **kwargs)
        load_checkpoint(model, entry, read_bundled(entry.bundled), f"{entry.name} (bundled)")
        return model.to(device) if device is not None else model
    if checkpoint is None:
        if entry.weights is None:
            raise CheckpointError(
                f"{entry.name} has no official checkpoint. Pass checkpoint=PATH (or --checkpoint PATH), "
                f"e.g. a student trained with swiftsam."
            )
        if allow_download:
            path = download(entry, progress=progress)
        else:
            path = cached_path(entry.weights)
            if not path.exists():
                raise DownloadError(f"{entry.name} is not cached at {path} and downloading was disabled.")
    else:
        path = Path(checkpoint)
    if entry.loader is not None:  # a format of its own, read by a restricted loader
        model = entry.loader(str(path))
        model.multimask_only = entry.multimask_only
        return model.to(device) if device is not None else model
    state = read_state_dict(path, weights_only=not allow_pickle)
    model = build(entry.name, **kwargs)
    from .quant.ptq import prepare_for_state

    prepare_for_state(model, state)  # a swiftsam W8A8 checkpoint: quantized layers come back with their scales
    load_checkpoint(model, entry, state, str(path))
    return model.to(device) if device is not None else model
