"""Weights kept inside the package (``swiftsam/weights/``): the project's own models load offline."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..utils import save_torch_atomic, sha256_of
from .checkpoint import read_state_dict
from .registry import Bundled

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def read_bundled(bundled: Bundled, folder: Path = WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The union of the bundled files' state dicts (keys renamed as ``bundled.rename`` says), each file checked
    against its sha256, as float32."""
    state: dict[str, torch.Tensor] = {}
    for name, expected in zip(bundled.files, bundled.sha256):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"bundled weights {path} are missing: the installation is incomplete; "
                                  f"reinstall swiftsam (pip install -e . from a full clone).")
        got = sha256_of(path)
        if got != expected:
            raise CheckpointError(f"bundled weights {path} are damaged (sha256 {got[:12]}..., expected "
                                  f"{expected[:12]}...); reinstall swiftsam.")
        part = read_state_dict(path)
        for old, new in bundled.rename:
            part = {new + k[len(old):] if k.startswith(old) else k: v for k, v in part.items()}
        clash = part.keys() & state.keys()
        if clash:
            raise CheckpointError(f"bundled files overlap on {sorted(clash)[:3]}")
        state.update(part)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def write_fp16(state: dict[str, torch.Tensor], path: str | os.PathLike[str], prefixes: tuple[str, ...]) -> str:
    """Write the tensors of ``state`` under ``prefixes`` in fp16 (atomically); returns the file's sha256."""
    part = {k: (v.half() if v.is_floating_point() else v).contiguous().clone()
            for k, v in state.items() if k.startswith(prefixes)}
    if not part:
        raise ValueError(f"no tensor starts with {prefixes}")
    path = Path(path)
    save_torch_atomic(part, path)  # reproducible: the same tensors give the same file and sha256
    return sha256_of(path)
