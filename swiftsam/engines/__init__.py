"""Engines: the same encoder and decoder run by PyTorch, ONNX Runtime or TensorRT, chosen by name.

``get_engine("auto", model)`` picks: on a CUDA model, TensorRT when it is installed, else compiled
torch; on CPU, whichever of torch / onnxruntime measured faster for the model's family
(``CPU_FASTEST``, from ``benchmarks/engines.md``), falling back to torch without onnxruntime.
"""

from __future__ import annotations

import importlib.util
import inspect

from ..errors import EngineError
from ..modeling.sam import Sam
from .base import Engine
from .ort_engine import OrtEngine
from .tensorrt_engine import TensorRTEngine
from .torch_engine import TorchEngine

ENGINES: dict[str, type[Engine]] = {"torch": TorchEngine, "onnxruntime": OrtEngine, "tensorrt": TensorRTEngine}

# fp32 encoder latency on a 2-core x86 CPU, torch eager vs onnxruntime (benchmarks/engines.md).
# Keys are zoo names or families; a name wins over its family.
CPU_FASTEST: dict[str, str] = {
    "sam": "onnxruntime",  # ViT-B 6.0 s vs 12.7 s
    "tinyvit": "onnxruntime",  # MobileSAM 0.55 s vs 0.88 s
    "efficientvit": "torch",  # L0 (512 input) 0.55 s vs 0.60 s
    "efficientvit-sam-xl0": "onnxruntime",  # XL0 (1024 input) 2.3 s vs 2.7 s
    "efficientvit-sam-xl1": "onnxruntime",  # measured for XL0, same blocks at the same input size
    "nanosam": "onnxruntime",  # ResNet18 0.40 s vs 0.59 s
}


def engine_names() -> list[str]:
    return ["auto", *ENGINES]


def auto_engine(model: Sam) -> str:
    """The engine ``auto`` stands for, for this model where it lives now."""
    if model.device.type == "cuda":
        return "tensorrt" if importlib.util.find_spec("tensorrt") else "torch"
    choice = "torch"
    if model.zoo_name:
        from ..zoo import get_entry

        choice = CPU_FASTEST.get(model.zoo_name, CPU_FASTEST.get(get_entry(model.zoo_name).family, "torch"))
    if choice == "onnxruntime" and not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        return "torch"
    return choice


def get_engine(name: str | Engine, model: Sam, **options) -> Engine:
    """An engine by name (``auto``, ``torch``, ``onnxruntime``, ``tensorrt``) with its options."""
    if isinstance(name, Engine):
        return name
    if name == "auto":
        name = auto_engine(model)
        if name == "torch" and model.device.type == "cuda" and not options:
            options = {"compile": True}
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose from {', '.join(engine_names())}.")
    cls = ENGINES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EngineError(f"the {name} engine has no option {', '.join(unknown)}; it takes {', '.join(accepted)}.")
    return cls(model, **options)


__all__ = ["CPU_FASTEST", "ENGINES", "Engine", "OrtEngine", "TensorRTEngine", "TorchEngine", "auto_engine",
           "engine_names", "get_engine"]
