"""TensorRT engine: builds serialized engines from our ONNX graphs and runs them with the Python API.

Engines are cached under ``$SWIFTSAM_HOME/tensorrt`` keyed by model, weights fingerprint, precision,
GPU name, TensorRT version and profile limits, because an engine is only valid for the exact GPU and
TensorRT build that made it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import EngineError
from ..export.onnx import cached_export, check_export_matches, code_fingerprint, read_manifest
from ..modeling.segmenter import Segmenter
from ..modeling.stages import Stage
from ..utils import atomic_path
from ..zoo.hub import swiftsam_home
from .base import StageEngine

PRECISIONS = ("fp32", "fp16")


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError(
            "the tensorrt engine needs NVIDIA TensorRT and a CUDA GPU: pip install tensorrt "
            "(with a CUDA build of torch), or use engine='onnxruntime' / engine='torch'."
        ) from None
    if not torch.cuda.is_available():
        raise EngineError("the tensorrt engine needs a CUDA GPU; none is visible to torch here.")
    return tensorrt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _dims_to_torch(trt, dtype):
    return {
        trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
        trt.int64: torch.int64, trt.bool: torch.bool,
    }[dtype]


def has_qdq(onnx_path: Path) -> bool:
    """Whether a graph carries QuantizeLinear nodes (an int8 QDQ export)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def build_engine(onnx_path: Path, engine_path: Path, profile: dict[str, tuple[tuple, tuple, tuple]],
                 precision: str, workspace_gb: float = 4.0) -> None:
    """Parse ``onnx_path``, build with one optimisation profile (min/opt/max per input), save atomically."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if has_qdq(onnx_path):
        # explicit quantization (swiftsam quantize / QAT): the graph's Q/DQ pairs pin int8 where they are
        config.set_flag(trt.BuilderFlag.INT8)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see the log above).")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))


class _TrtRunner:
    def __init__(self, trt, path: Path) -> None:
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{path} could not be loaded by this TensorRT; delete it to rebuild.")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def __call__(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for name in self.inputs:
            t = feed[name].contiguous().to(_dims_to_torch(self.trt, self.engine.get_tensor_dtype(name)))
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = torch.empty(shape, dtype=_dims_to_torch(self.trt, self.engine.get_tensor_dtype(name)),
                                    device="cuda")
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see the log above).")
        stream.synchronize()
        return out


def _profile(stage: Stage, axes: dict[str, tuple[int, int, int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """A TensorRT optimisation profile (min, opt, max shape per input) for ``stage``."""
    return {name: tuple(shape) for name, shape in zip(
        stage.input_names,
        zip(*(stage.input_shapes({a: r[k] for a, r in axes.items()}).values() for k in range(3))), strict=True)}


class TensorRTEngine(StageEngine):
    """Encoder and batched decoder as TensorRT engines (built on first use, then cached).

    Profiles: encoder batch 1..``max_batch``; decoder 1..``max_prompts`` prompts of
    1..``max_points`` points each (box corners and padding count as points).
    """

    name = "tensorrt"

    def __init__(self, model: Segmenter, precision: str = "fp16", max_batch: int = 4, max_prompts: int = 64,
                 max_points: int = 16, onnx_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(model)
        trt = _trt()
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS} (int8: give onnx_dir of a `swiftsam quantize` export), got {precision!r}.")
        if min(max_batch, max_prompts, max_points) < 1:
            raise EngineError("max_batch, max_prompts and max_points must be >= 1.")
        self.precision = precision
        self.max_prompts = max_prompts  # prompts per decoder call its profile takes (Predictor's batches follow it)
        folder = Path(onnx_dir) if onnx_dir else cached_export(model, swiftsam_home() / "onnx", ("encoder", "decoder"))
        manifest = read_manifest(folder)
        if onnx_dir:
            check_export_matches(folder, manifest, model)  # other weights' graphs would run silently
        gpu = _slug(torch.cuda.get_device_name())
        int8 = "-int8" if manifest.get("quantization") else ""
        graphs = "" if onnx_dir else f"-{code_fingerprint()}"  # the cached export is keyed by the graph code too
        key = (f"{model.zoo_name or 'model'}-{manifest['fingerprint']}{graphs}-{precision}{int8}-{gpu}"
               f"-trt{trt.__version__}"
               f"-b{max_batch}-p{max_prompts}x{max_points}")
        root = swiftsam_home() / "tensorrt"
        # min / opt / max of every dynamic axis; the shapes themselves are the model's stages
        axes = {"batch": (1, 1, max_batch), "embedding_batch": (1, 1, max_prompts), "prompts": (1, 1, max_prompts),
                "points": (1, 2, max_points)}
        stages = self._stages = model.stages
        profiles = {part: _profile(stages[stage], axes) for part, stage in (("encoder", "encode"), ("decoder", "decode"))}
        self.paths = {}
        for part, profile in profiles.items():
            path = root / f"{key}-{part}.engine"
            if not path.exists():
                build_engine(folder / f"{part}.onnx", path, profile, precision)
            self.paths[part] = path
        self._runners = {"encode": _TrtRunner(trt, self.paths["encoder"]),
                         "decode": _TrtRunner(trt, self.paths["decoder"])}

    @property
    def device(self) -> torch.device:
        return torch.device("cuda")

    def _run(self, stage: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run ``stage`` (``model.stages``: its input and output names) on float32 CUDA tensors."""
        spec = self._stages[stage]
        out = self._runners[stage]({n: t.to("cuda", torch.float32) for n, t in zip(spec.input_names, inputs, strict=True)})
        return [out[n].float() for n in spec.output_names]

    def describe(self) -> str:
        return f"tensorrt[{self.precision}]"
