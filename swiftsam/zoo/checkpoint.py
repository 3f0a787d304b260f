"""Reading checkpoints and loading them strictly into zoo models."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..modeling.sam import Sam
from .registry import ModelEntry

WRAPPER_KEYS = ("model", "state_dict")


def read_state_dict(path: str | os.PathLike[str], weights_only: bool = True) -> dict[str, torch.Tensor]:
    """Read a plain state dict, or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``.

    ``weights_only=True`` (the default) refuses pickled code; pass False only for a file you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if not found:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint that can be read (torch.load cannot unpickle it).") from None
        raise CheckpointError(
            f"{path} holds pickled Python objects that weights_only=True refuses ({found[0]}). "
            f"Load it with allow_pickle=True only if you trust where it came from."
        ) from None
    except Exception as e:  # zip/format errors from torch
        raise CheckpointError(f"{path} is not a PyTorch checkpoint that can be read ({type(e).__name__}: {e}).") from None
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
    return obj


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
