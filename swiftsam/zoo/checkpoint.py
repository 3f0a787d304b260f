"""Reading checkpoints and loading them strictly into zoo models."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..modeling.sam import Sam
from .registry import ModelEntry

WRAPPER_KEYS = ("model", "state_dict")
# what swiftsam records beside the weights it saves: {"model": state dict, "swiftsam": {...}}
META_KEY = "swiftsam"
META_FORMAT = "swiftsam-checkpoint/1"


def checkpoint_meta(model: Sam) -> dict:
    """The settings a checkpoint of ``model`` must be loaded with: zoo name, input size, box mask prior, and
    the whole model contract (``modeling.contract.ModelContract.to_dict``)."""
    return {"format": META_FORMAT, "model": model.zoo_name, "input_size": int(model.spec.input_size),
            "box_mask_prior": bool(getattr(model, "box_mask_prior", False)), "contract": model.contract.to_dict()}


def save_checkpoint(model: Sam, path: str | os.PathLike[str], state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``state`` (default: the model's state dict) with :func:`checkpoint_meta`, atomically and
    reproducibly (the same weights give the same bytes). ``read_state_dict`` reads it like a plain state dict."""
    from ..utils import save_torch_atomic

    state = model.state_dict() if state is None else state
    return save_torch_atomic({"model": state, META_KEY: checkpoint_meta(model)}, path)


def read_state_dict(path: str | os.PathLike[str], weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read a plain state dict, or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``.

    ``weights_only=True`` (the default) refuses pickled code; pass False only for a file you trust.
    """
    return read_checkpoint(path, weights_only)[0]


def read_checkpoint(path: str | os.PathLike[str], weights_only: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """:func:`read_state_dict` plus what swiftsam recorded with the weights ({} for other checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        code = _pickled_code(str(e)) if weights_only else None
        if code is None:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint that can be read (torch.load cannot unpickle it).") from None
        raise CheckpointError(
            f"{path} holds pickled Python code or objects ({code}), which would run on loading, so it was "
            f"refused (nothing in it ran). If you trust where the file came from, load it in Python with "
            f"swiftsam.load(..., allow_pickle=True): only for files you trust (the command line has no such option)."
        ) from None
    except Exception as e:  # zip/format errors from torch
        raise CheckpointError(f"{path} is not a PyTorch checkpoint that can be read ({type(e).__name__}: {e}).") from None
    meta = obj.get(META_KEY) if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) and meta.get("format") == META_FORMAT else {}
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not contain a state dict (name -> tensor); found {type(obj).__name__}."
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, meta


# What torch's weights_only unpickler says when a pickle asks for a function or class it does not allow
# (os.system, a custom class ...), as opposed to a file that is not a pickle at all.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REFUSED_OBJECT = ("Can only create new object", "Can only build", "call reduce", "Unsupported class")


def _pickled_code(message: str) -> str | None:
    """What a weights_only refusal names (e.g. "posix.system"), or None when the file is just unreadable."""
    found = _REFUSED_GLOBAL.search(message)
    if found:
        return found.group(1)
    for line in message.splitlines():
        if any(marker in line for marker in _REFUSED_OBJECT):
            return line.strip().removeprefix("WeightsUnpickler error:").strip()
    return None


def _closest_entry(keys: set[str]) -> str | None:
    """Name of the zoo model whose state-dict keys overlap ``keys`` the most (built on meta)."""
    from .registry import _REGISTRY

    scores = {}
    with torch.device("meta"):
        for name, entry in _REGISTRY.items():
            if entry.loader is not None:  # its own file format, never a state dict
                continue
            theirs = {k for k in entry.build().state_dict()}
            ours = {k for k in keys if not k.startswith(entry.ignore_keys)} if entry.ignore_keys else keys
            scores[name] = len(ours & theirs) / max(1, len(ours | theirs))
    top = max(scores.values(), default=0.0)
    if top < 0.9:
        return None
    return " or ".join(name for name, score in scores.items() if score == top)


def load_checkpoint(model: Sam, entry: ModelEntry, state: dict[str, torch.Tensor], source: str) -> Sam:
    """Load ``state`` into ``model`` strictly: any missing, unexpected or misshapen key is an error."""
    state = {k: v for k, v in state.items() if not k.startswith(entry.ignore_keys)} if entry.ignore_keys else state
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or misshapen:
        def show(items: list[str]) -> str:
            head = ", ".join(items[:8])
            return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        lines = [f"checkpoint {source} does not fit model {entry.name}:"]
        if missing:
            lines.append(f"  missing keys: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {show(unexpected)}")
        if misshapen:
            lines.append(f"  wrong shapes: {show(misshapen)}")
        guess = _closest_entry(set(state))
        if guess and entry.name not in guess.split(" or "):
            lines.append(f"  it looks like a {guess} checkpoint: load it with that model name.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model
