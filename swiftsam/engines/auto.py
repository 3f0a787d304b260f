"""``engine="auto"`` on a CPU: the engine measured fastest for the model's family and precision on this machine.

The choice comes from measurements, never from a hand-written preference:

1. this machine's own calibration, if one was run (``calibrate``: each installed engine that can run the
   precision encodes one image a few times; the fastest is kept in ``$SWIFTSAM_HOME/engine-choice.json`` under a
   key made of the CPU, its core count, the family, the encoder input size and the precision). It runs on first
   use when ``SWIFTSAM_AUTO_CALIBRATE=1`` (costs one export and a few encoder calls per engine, once), or when
   called (``swiftsam.engines.auto.calibrate(model, precision)``);
2. else the table measured on the project's 2-core x86 CPU (``MEASURED``, from ``benchmarks/engines.md``);
3. the fastest of those that is installed; torch when none is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import EngineError
from ..modeling.sam import Sam
from ..utils import atomic_path
from ..zoo.hub import swiftsam_home
from .measured import family as _family

CHOICE_FILE = "engine-choice.json"
CALIBRATE_ENV = "SWIFTSAM_AUTO_CALIBRATE"
# the precision each engine takes, and the option that sets it
PRECISION_OPTION = {"torch": "dtype", "openvino": "precision", "onnxruntime": None}
RUNS_PRECISION = {"torch": ("fp32", "bf16", "fp16"), "openvino": ("fp32", "bf16", "int8"), "onnxruntime": ("fp32",)}
NEEDS = {"torch": (), "onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}

# (family or zoo name, precision) -> engines from fastest to slowest, measured on a 2-core AMD EPYC (AVX-512 BF16):
# encoder latency, benchmarks/engines.md (a zoo name wins over its family)
MEASURED: dict[tuple[str, str], tuple[str, ...]] = {
    # fp32: quiet machine, 2 threads, one process per engine (benchmarks/engines.md, "The fp32 engine auto picks";
    # benchmarks/engines_fp32_choice.json)
    ("sam", "fp32"): ("openvino", "onnxruntime", "torch"),  # ViT-B 5.48 s, 6.56 s, 9.17 s
    ("tinyvit", "fp32"): ("openvino", "onnxruntime", "torch"),  # MobileSAM 584, 666, 740 ms
    ("efficientvit", "fp32"): ("openvino", "torch", "onnxruntime"),  # L0 (512 input) 407, 476, 744 ms
    ("efficientvit-sam-xl0", "fp32"): ("openvino", "torch", "onnxruntime"),  # XL0 (1024 input) 1.91, 2.32, 2.49 s
    ("efficientvit-sam-xl1", "fp32"): ("openvino", "torch", "onnxruntime"),  # measured for XL0: same blocks and size
    ("nanosam", "fp32"): ("openvino", "onnxruntime", "torch"),  # ResNet18 414, 434, 452 ms
    ("sam2", "fp32"): ("openvino", "torch", "onnxruntime"),  # hiera-tiny 1.82, 2.09, 2.68 s
    # swiftsam-r18 (256 px), CPU time per encoder call at 1 thread (benchmarks/engines.md, "OpenVINO")
    ("swiftsam", "fp32"): ("onnxruntime", "openvino", "torch"),  # 100 ms, 101 ms, 121 ms
    ("swiftsam", "bf16"): ("openvino", "torch"),  # 51 ms vs 73 ms
    ("tinyvit", "bf16"): ("openvino", "torch"),  # MobileSAM 627 ms vs 909 ms (same run, same measure)
    # quiet machine, 2 threads, one process per engine (benchmarks/engines.md, "Every family against the authors' code")
    ("sam", "bf16"): ("openvino", "torch"),  # ViT-B 2.65 s vs 5.08 s
    ("efficientvit", "bf16"): ("openvino", "torch"),  # L0 199 ms vs 271 ms, XL0 945 ms vs 1,183 ms
    ("sam2", "bf16"): ("openvino", "torch"),  # hiera-tiny 882 ms vs 1,236 ms
}


def machine_id() -> str:
    """The CPU model and its core count: what an engine choice is valid for."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def choice_key(model: Sam, precision: str) -> str:
    name, family = _family(model)
    return f"{machine_id()}|{family or name or 'model'}|{model.spec.input_size}|{precision}"


def installed(engine: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in NEEDS[engine])


def candidates(precision: str) -> list[str]:
    """The installed CPU engines that run ``precision``."""
    return [e for e, runs in RUNS_PRECISION.items() if precision in runs and installed(e)]


def choice_file() -> Path:
    return swiftsam_home() / CHOICE_FILE


def read_choices() -> dict:
    try:
        doc = json.loads(choice_file().read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def engine_options(engine: str, precision: str) -> dict:
    """The options that make ``engine`` run ``precision``."""
    option = PRECISION_OPTION[engine]
    if option is None or (engine == "torch" and precision == "fp32"):
        return {}
    return {option: precision}


def measure_engines(model: Sam, precision: str, engines: list[str], runs: int = 3) -> dict[str, float]:
    """Median seconds of one encoder call (batch 1) per engine; engines that fail to build are left out."""
    from .openvino_engine import OpenVINOEngine
    from .ort_engine import OrtEngine
    from .torch_engine import TorchEngine

    classes = {"torch": TorchEngine, "onnxruntime": OrtEngine, "openvino": OpenVINOEngine}
    s = model.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    times = {}
    for name in engines:
        try:
            engine = classes[name](model, **engine_options(name, precision))
            engine.encode(x)  # warm-up (first-call compilation and allocation)
            samples = []
            for _ in range(runs):
                t = time.perf_counter()
                engine.encode(x)
                samples.append(time.perf_counter() - t)
        except EngineError:
            continue
        times[name] = statistics.median(samples)
    return times


def calibrate(model: Sam, precision: str = "fp32",
              measure: Callable[[Sam, str, list[str]], dict[str, float]] | None = None) -> str:
    """Time every installed engine for ``precision`` on ``model``'s encoder (``measure``: default
    ``measure_engines``), record the fastest for this machine, family, input size and precision in
    ``$SWIFTSAM_HOME/engine-choice.json``, and return it."""
    times = (measure or measure_engines)(model, precision, candidates(precision))
    if not times:
        raise EngineError(f"no installed engine runs {model.zoo_name or 'the model'} in {precision} here.")
    best = min(times, key=times.get)
    doc = read_choices()
    doc[choice_key(model, precision)] = {"engine": best, "encoder_s": times,
                                         "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        choice_file().parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(choice_file()) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    except OSError:  # an unwritable SWIFTSAM_HOME: the choice holds for this process only
        pass
    return best


def choose(model: Sam, precision: str = "fp32") -> str:
    """The CPU engine ``auto`` stands for: this machine's calibration, else the measured table (see the module)."""
    recorded = read_choices().get(choice_key(model, precision), {}).get("engine")
    if recorded in RUNS_PRECISION and installed(recorded):
        return recorded
    if os.environ.get(CALIBRATE_ENV) == "1":
        return calibrate(model, precision)
    name, family = _family(model)
    order = MEASURED.get((name, precision)) or MEASURED.get((family, precision)) or ()
    for engine in order:
        if installed(engine) and precision in RUNS_PRECISION[engine]:
            return engine
    runnable = candidates(precision)
    return runnable[0] if runnable else "torch"


def resolve(model: Sam, options: dict) -> tuple[str, dict]:
    """``auto`` with the caller's options on a CPU model: the engine, and the options in its spelling
    (``dtype`` for torch, ``precision`` for openvino)."""
    options = dict(options)
    precision = options.pop("precision", None) or options.pop("dtype", None) or "fp32"
    engine = choose(model, precision)
    if precision not in RUNS_PRECISION[engine]:
        raise EngineError(f"{engine} cannot run {precision}; choose an engine that does.")
    return engine, {**options, **engine_options(engine, precision)}
