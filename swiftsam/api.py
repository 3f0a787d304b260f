"""Top-level entry points: build a zoo model, or load it with its official weights."""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

import torch

from .errors import CheckpointError, DownloadError, InputError
from .modeling.contract import ModelContract
from .modeling.sam import Sam
from .runtime import resolve_device
from .zoo import get_entry
from .zoo.checkpoint import load_checkpoint, read_checkpoint
from .zoo.hub import cached_path, download

DEFAULT_MODEL = "swiftsam-r18"  # the project's own student: its weights ship with the package


def build(name: str, *, device: str | torch.device | None = None, **kwargs) -> Sam:
    """A zoo model with freshly initialised (random) weights, in eval mode.

    ``device``: where to put it (``auto``, ``cpu``, ``cuda``, ``cuda:N``: ``runtime.resolve_device``); None (the
    default) leaves it where torch creates it: the CPU, or the default device of a ``with torch.device(...)``
    block (the meta device, for shapes without memory). Random weights are for tests, training and benchmarks,
    which place the model themselves; ``load`` is the one that defaults to ``auto``."""
    entry = get_entry(name)
    target = None if device is None else resolve_device(device)
    size = kwargs.get("input_size")
    if size is not None and not entry.takes_input_size:
        raise InputError(f"{entry.name} has a fixed input size ({entry.spec.input_size} px); drop input_size.")
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise InputError(f"input_size must be a positive number of pixels, e.g. {entry.spec.input_size}; got {size!r}.")
    try:
        model = entry.build(**kwargs)
    except ValueError as e:  # the builder's own check of its settings (e.g. a size the encoder cannot take)
        raise InputError(f"{entry.name} cannot be built with {kwargs}: {e}.") from None
    model.contract = model.contract.replace(name=entry.name, **entry.policy())
    return model.eval() if target is None else model.to(target).eval()


def load(
    name: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = "auto",
    allow_download: bool = True,
    allow_pickle: bool = False,
    progress: bool = True,
    box_mask_prior: bool | None = None,
    **kwargs,
) -> Sam:
    """Load zoo model ``name`` with its official checkpoint (downloaded and verified on first use)
    or with ``checkpoint`` (a local file in the authors' format or ours).

    ``device``: ``auto`` (CUDA when present, else the CPU; ``$SWIFTSAM_DEVICE`` overrides), ``cpu``, ``cuda``,
    ``cuda:N`` or a torch.device (``runtime.resolve_device``; checked before anything is downloaded).
    ``allow_pickle=True`` reads checkpoints that contain pickled objects; use it only for files you trust.
    Extra keyword arguments go to the model's builder (e.g. ``input_size=512`` for NanoSAM students).

    Checkpoints swiftsam writes (``swiftsam train``'s model.pt, ``quantize --backend torch``) record the zoo name,
    input size and box mask prior they were trained with: the model runs with those unless the caller passes
    ``input_size`` / ``box_mask_prior``. Weights recorded for another zoo model with the same architecture load
    with a warning naming both; for another architecture the error says which name to use. Plain state dicts
    (the authors' checkpoints) load with the entry's settings.
    """
    entry = get_entry(name)
    device = resolve_device(device)
    if "input_size" in kwargs and kwargs["input_size"] is None:  # None: not chosen (the recorded or default size)
        del kwargs["input_size"]
    if checkpoint is None and entry.bundled is not None:  # the project's own models ship in the package
        from .zoo.bundled import read_bundled

        model = build(entry.name, **kwargs)
        load_checkpoint(model, entry, read_bundled(entry.bundled), f"{entry.name} (bundled)")
        model.weights_source = f"{entry.name} (bundled)"
        if box_mask_prior is not None:
            model.box_mask_prior = box_mask_prior
        return model.to(device)
    if checkpoint is None:
        if entry.weights is None:
            how = entry.weights_note or "e.g. a student trained with swiftsam"
            raise CheckpointError(
                f"{entry.name} has no official checkpoint. Pass checkpoint=PATH (or --checkpoint PATH); {how}."
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
        model = entry.loader(str(path), lambda: build(entry.name, **kwargs))
        model.contract = model.contract.replace(name=entry.name, **entry.policy())
        model.weights_source = str(path)
        return model.to(device)
    state, meta = read_checkpoint(path, weights_only=not allow_pickle)
    recorded = meta.get("model")
    if meta.get("input_size") and "input_size" not in kwargs and entry.takes_input_size:
        kwargs["input_size"] = int(meta["input_size"])  # the size it was trained at, unless the caller says otherwise
    model = build(entry.name, **kwargs)
    from .modeling.quant import prepare_for_state

    prepare_for_state(model, state)  # a swiftsam W8A8 checkpoint: quantized layers come back with their scales
    try:
        load_checkpoint(model, entry, state, str(path))
    except CheckpointError as e:
        if recorded and recorded != entry.name:
            raise CheckpointError(f"{path} holds {recorded} weights (recorded when swiftsam saved it), which do not fit "
                                  f"{entry.name}: load it as {recorded} (--model {recorded}).\n{e}") from None
        raise
    if "contract" in meta:  # the output policy it was trained and saved with
        saved = ModelContract.from_dict(meta["contract"])
        model.contract = model.contract.replace(multimask_only=saved.multimask_only,
                                                box_mask_prior=saved.box_mask_prior, everything=saved.everything)
    elif "box_mask_prior" in meta:
        model.box_mask_prior = bool(meta["box_mask_prior"])
    if box_mask_prior is not None:
        model.box_mask_prior = box_mask_prior
    if recorded and recorded != entry.name:
        warnings.warn(
            f"{path} holds {recorded} weights (recorded when swiftsam saved it) but was loaded as {entry.name}: "
            f"they share the architecture, so it runs as recorded (input size {model.spec.input_size}, "
            f"box mask prior {'on' if model.box_mask_prior else 'off'}). Load it as {recorded} (--model {recorded}) "
            f"to silence this warning.", UserWarning, stacklevel=2)
    model.weights_source = str(path)
    return model.to(device)


def load_export(onnx_dir: str | os.PathLike[str]) -> Sam:
    """The model of an export folder (``swiftsam export``), without its torch weights: the architecture on
    PyTorch's meta device (no memory, no computation) carrying the contract the manifest recorded (input
    size, pixel mean/std, box mask prior, output policy). Run it with the folder's graphs:
    ``Predictor(load_export(DIR), engine="onnxruntime", onnx_dir=DIR)`` or ``Predictor.from_export(DIR)``."""
    from .errors import EngineError
    from .export.onnx import read_manifest

    folder = Path(onnx_dir)
    manifest = read_manifest(folder)
    if "contract" not in manifest:
        raise EngineError(f"{folder} was exported by an older swiftsam, without the model's contract: export the "
                          f"model again (swiftsam export MODEL --out {folder}) to run it without its weights.")
    try:
        contract = ModelContract.from_dict(manifest["contract"])
    except ValueError as e:
        raise EngineError(f"{folder}/manifest.json: {e}; export the model again.") from None
    if not contract.name:
        raise EngineError(f"{folder} holds a model built by hand (no zoo name): load its weights and pass the model.")
    entry = get_entry(contract.name)
    size = {"input_size": contract.image.input_size} if entry.takes_input_size else {}
    with torch.device("meta"):
        model = build(entry.name, **size)
    if model.contract.image != contract.image or model.contract.features != contract.features:
        raise EngineError(f"{folder} was exported from a {contract.name} that this swiftsam builds differently "
                          f"({contract.image} vs {model.contract.image}); export it again with this version.")
    model.contract = contract
    model.export_dir = str(folder)
    model.weights_source = manifest.get("weights") or f"{folder} (exported graphs)"
    return model
