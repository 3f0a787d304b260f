"""Engines: the same encoder and decoder run by PyTorch, ONNX Runtime or TensorRT, chosen by name.

``get_engine("auto", model)`` picks: on a CUDA model, TensorRT when it is installed, else compiled
torch; on CPU, the engine measured fastest for the model's family and precision on this machine
(``engines.auto``: a calibration cached in ``$SWIFTSAM_HOME``, else the table measured in
``benchmarks/engines.md``), among those installed.
"""

from __future__ import annotations

import importlib.util
import inspect

from ..errors import EngineError
from ..modeling.sam import Sam
from .auto import MEASURED, resolve
from .base import Engine
from .openvino_engine import OpenVINOEngine
from .ort_engine import OrtEngine
from .tensorrt_engine import TensorRTEngine
from .torch_engine import TorchEngine

ENGINES: dict[str, type[Engine]] = {"torch": TorchEngine, "onnxruntime": OrtEngine, "tensorrt": TensorRTEngine,
                                     "openvino": OpenVINOEngine}

# the fp32 row of the measured table (engines.auto.MEASURED): the fastest engine per zoo name or family
CPU_FASTEST: dict[str, str] = {key: order[0] for (key, precision), order in MEASURED.items() if precision == "fp32"}


def engine_names() -> list[str]:
    return ["auto", *ENGINES]


def auto_engine(model: Sam) -> str:
    """The engine ``auto`` stands for, for this model where it lives now."""
    if model.device.type == "cuda":
        return "tensorrt" if importlib.util.find_spec("tensorrt") else "torch"
    return resolve(model, {})[0]


def get_engine(name: str | Engine, model: Sam, **options) -> Engine:
    """An engine by name (``auto``, ``torch``, ``onnxruntime``, ``tensorrt``) with its options."""
    if isinstance(name, Engine):
        return name
    if name == "auto":
        if model.device.type == "cuda":
            name = auto_engine(model)
            if name == "torch" and not options:
                options = {"compile": True}
        else:
            name, options = resolve(model, options)
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose from {', '.join(engine_names())}.")
    cls = ENGINES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EngineError(f"the {name} engine has no option {', '.join(unknown)}; it takes {', '.join(accepted)}.")
    return cls(model, **options)


__all__ = ["CPU_FASTEST", "ENGINES", "Engine", "OpenVINOEngine", "OrtEngine", "TensorRTEngine", "TorchEngine", "auto_engine",
           "engine_names", "get_engine"]
