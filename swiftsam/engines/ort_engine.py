"""ONNX Runtime engine: our exported graphs on the CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError
from ..export.onnx import cached_export, check_export_matches, read_manifest
from ..modeling.segmenter import Segmenter
from ..zoo.hub import swiftsam_home
from .base import StageEngine

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise EngineError(
            "the onnxruntime engine needs onnxruntime: pip install 'swiftsam[onnx]' "
            "(or onnxruntime-gpu for the CUDA and TensorRT providers)."
        ) from None
    return onnxruntime


def onnx_cache_dir() -> Path:
    return swiftsam_home() / "onnx"


def _session(ort, path: Path, options, providers: list[str], again: str):
    """An InferenceSession, or a clear error for a graph onnxruntime cannot read (damaged, truncated, not ONNX)."""
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, NoSuchFile ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"onnxruntime cannot load {path} ({reason}): the graph is damaged or not an ONNX "
                          f"model; {again}.") from None


class OrtEngine(StageEngine):
    """Runs ``encoder.onnx`` and ``decoder.onnx``: exported from ``model`` on first use (cached under
    ``$SWIFTSAM_HOME/onnx`` by weights fingerprint), or taken from ``onnx_dir`` (``swiftsam export``).

    ``provider``: cpu (default), cuda or tensorrt, when the installed onnxruntime has it.
    ``threads``: intra-op threads (default: onnxruntime's choice, one per physical core).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: Segmenter,
        provider: str = "cpu",
        threads: int | None = None,
        onnx_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(model)
        ort = _ort()
        if provider not in PROVIDERS:
            raise EngineError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}.")
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            raise EngineError(
                f"this onnxruntime has no {PROVIDERS[provider]} (it has {', '.join(available)}); "
                "install onnxruntime-gpu for cuda / tensorrt, or use provider='cpu'."
            )
        if threads is not None and threads < 1:
            raise EngineError(f"threads must be >= 1, got {threads}.")
        self.provider = provider
        self.threads = threads
        if onnx_dir is None:
            try:
                folder = cached_export(model, onnx_cache_dir(), ("encoder", "decoder"))
            except OSError as e:  # SWIFTSAM_HOME under a file, read-only, full...
                raise EngineError(
                    f"cannot write the ONNX export cache {onnx_cache_dir()} ({e.strerror or e}): set SWIFTSAM_HOME to "
                    f"a writable folder (export SWIFTSAM_HOME=/path/to/writable/folder), or export the model once with "
                    f"`swiftsam export MODEL --out DIR` and pass --onnx-dir DIR (onnx_dir=DIR)."
                ) from None
        else:
            folder = Path(onnx_dir)
            manifest = read_manifest(folder)
            if model.zoo_name and manifest.get("model") and manifest["model"] != model.zoo_name:
                raise EngineError(f"{folder} holds an export of {manifest['model']}, not {model.zoo_name}.")
            missing = [p for p in ("encoder", "decoder") if p not in manifest.get("files", {})]
            if missing:
                raise EngineError(f"{folder} has no {' / '.join(missing)} graph; export it with swiftsam export.")
            check_export_matches(folder, manifest, model)
        self.folder = folder
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = [PROVIDERS[provider]] + (["CPUExecutionProvider"] if provider != "cpu" else [])
        again = (f"export it again (swiftsam export {model.zoo_name or 'MODEL'} ... --out {folder})" if onnx_dir is not None
                 else f"delete {folder} and it is exported again")
        self._stages = model.stages
        self._sessions = {"encode": _session(ort, folder / "encoder.onnx", options, providers, again),
                          "decode": _session(ort, folder / "decoder.onnx", options, providers, again)}

    def _run(self, stage: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run ``stage`` (``model.stages``: its input and output names) on float32 CPU arrays."""
        spec = self._stages[stage]
        session = self._sessions[stage]
        feed = {name: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
                for name, t in zip(spec.input_names, inputs, strict=True)}
        return [torch.from_numpy(a) for a in session.run(spec.output_names, feed)]

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"onnxruntime[{self.provider}{threads}]"
