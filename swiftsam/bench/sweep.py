"""``swiftsam bench``: a sweep of models x engines x precisions x batch sizes x input sizes.

Every cell is one timed workload (encoder, decoder with ``n`` prompts, or full pipeline) for one
implementation (``swiftsam`` or the authors' ``reference``). Results are written as JSON after
each cell (atomically), so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..api import build
from ..engines import get_engine
from ..errors import EngineError, InputError, SwiftSamError
from ..image_io import load_image
from ..modeling.sam import Sam
from ..runtime import autocast
from ..utils import atomic_path
from ..zoo import get_entry
from .measure import measure
from .reference import reference_workloads, why_no_reference
from .workloads import SwiftsamWorkloads, example_boxes

SCHEMA = "swiftsam.bench/1"
STAGES = ("encoder", "decoder", "pipeline")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # int8: the openvino engine (an NNCF encoder)
# engine name -> (registry engine, options); precision is added per cell
ENGINE_VARIANTS: dict[str, tuple[str, dict]] = {
    "torch": ("torch", {}),
    "torch-compile": ("torch", {"compile": True}),
    "torch-cudagraphs": ("torch", {"cuda_graphs": True}),
    "onnxruntime": ("onnxruntime", {}),
    "tensorrt": ("tensorrt", {}),
    "openvino": ("openvino", {}),
}
# the settings a resumed sweep must share with the results it continues
MEASUREMENT_KEYS = ("warmup", "iterations", "min_time_s", "device", "threads", "channels_last", "seed", "image")


@dataclass
class BenchConfig:
    models: list[str]
    engines: list[str] = field(default_factory=lambda: ["torch"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    input_sizes: list[int | None] = field(default_factory=lambda: [None])  # None: the model's own
    prompts: list[int] = field(default_factory=lambda: [1, 8, 64])
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    warmup: int = 2
    iterations: int = 10
    min_time_s: float = 0.0
    compare_reference: bool = False
    device: str = "cpu"
    threads: int | None = None
    channels_last: bool | None = None  # None: the torch engine's measured default (engines.measured.CHANNELS_LAST)
    seed: int = 0
    image: str | None = None  # None: a synthetic 480 x 640 image

    def validate(self) -> None:
        if not self.models:
            raise InputError("name at least one model (--models mobilesam,nanosam-r18).")
        for m in self.models:
            get_entry(m)  # ModelNotFoundError names the zoo
        checks = [
            (self.engines, ENGINE_VARIANTS, "engine"), (self.precisions, PRECISIONS, "precision"),
            (self.stages, STAGES, "stage"),
        ]
        for values, allowed, what in checks:
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise InputError(f"unknown {what} {', '.join(map(str, bad)) or '(none given)'}; choose from "
                                 f"{', '.join(allowed)}.")
        for values, what in ((self.batch_sizes, "batch size"), (self.prompts, "prompt count")):
            if not values or any(v < 1 for v in values):
                raise InputError(f"every {what} must be >= 1, got {values}.")
        if any(s is not None and (s < 64 or s % 16) for s in self.input_sizes):
            raise InputError(f"input sizes must be multiples of 16 and >= 64 (or 'native'), got {self.input_sizes}.")
        if self.iterations < 1 or self.warmup < 0:
            raise InputError(f"need --iterations >= 1 and --warmup >= 0, got {self.iterations} and {self.warmup}.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {self.device}: this torch sees no CUDA device; use --device cpu.")
        if self.image is not None and not Path(self.image).is_file():
            raise InputError(f"--image {self.image}: no such file.")


@dataclass(frozen=True)
class Cell:
    model: str
    implementation: str  # "swiftsam" or "reference"
    engine: str  # an ENGINE_VARIANTS name, or "eager" for the reference
    precision: str
    input_size: int | None  # None: the model's own
    stage: str
    batch_size: int  # images per call (1 for the decoder)
    prompts: int | None  # decoder: prompts per call; pipeline: one box per image; encoder: None

    @property
    def key(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())


def plan(config: BenchConfig) -> list[Cell]:
    """Every cell of the sweep, grouped so that each model and engine is built once."""
    cells = []
    for model in config.models:
        for size in config.input_sizes:
            impls = [("swiftsam", e) for e in config.engines]
            if config.compare_reference:
                impls.insert(0, ("reference", "eager"))
            for impl, engine in impls:
                for precision in config.precisions:
                    base = dict(model=model, implementation=impl, engine=engine, precision=precision, input_size=size)
                    for stage in config.stages:
                        if stage == "decoder":
                            cells += [Cell(**base, stage=stage, batch_size=1, prompts=n) for n in config.prompts]
                        else:
                            cells += [Cell(**base, stage=stage, batch_size=b, prompts=1 if stage == "pipeline" else None)
                                      for b in config.batch_sizes]
    return cells


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    for pkg in ("onnxruntime", "tensorrt", "openvino"):
        with contextlib.suppress(Exception):
            info[pkg] = __import__(pkg).__version__
    return info


def _build_model(name: str, size: int | None, device: torch.device, seed: int) -> Sam:
    entry = get_entry(name)
    native = entry.spec.input_size
    torch.manual_seed(seed)
    if size is None or size == native:
        model = build(name)
    elif entry.takes_input_size:
        model = build(name, input_size=size)
    else:
        raise EngineError(f"{name}'s encoder is built for {native} x {native} inputs only")
    return model.to(device)


def _make_engine(model: Sam, cell: Cell, config: BenchConfig):
    engine, options = ENGINE_VARIANTS[cell.engine]
    options = dict(options)
    device = model.device
    if engine == "torch":
        if cell.precision == "int8":
            raise EngineError("the torch engine has no int8 path here (swiftsam quantize --backend torch is fake-quant)")
        options.update(dtype=cell.precision, channels_last=config.channels_last)
    elif engine == "onnxruntime":
        if cell.precision != "fp32":
            raise EngineError(f"the onnxruntime engine runs fp32 graphs only (asked for {cell.precision})")
        options.update(provider="cuda" if device.type == "cuda" else "cpu", threads=config.threads)
    elif engine == "openvino":
        if cell.precision == "fp16":
            raise EngineError("the openvino engine runs fp32, bf16 or int8 on CPU, not fp16")
        options.update(precision=cell.precision, threads=config.threads)
    elif engine == "tensorrt":
        if device.type != "cuda":
            raise EngineError("tensorrt needs --device cuda")
        if cell.precision == "bf16":
            raise EngineError("the tensorrt engine builds fp32 or fp16 engines, not bf16")
        options.update(precision=cell.precision, max_batch=max(config.batch_sizes), max_prompts=max(config.prompts))
    return get_engine(engine, model, **options)


class _Resources:
    """The model / engine / reference objects the current group of cells shares."""

    def __init__(self, config: BenchConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self._cache: dict[tuple, object] = {}

    def get(self, key: tuple, make: Callable[[], object]) -> object:
        if key not in self._cache:
            if key[0] == "model":  # a new model: drop everything built for the previous one
                self._cache.clear()
            try:
                self._cache[key] = make()
            except SwiftSamError as e:
                self._cache[key] = e
            except (RuntimeError, NotImplementedError, TypeError) as e:  # e.g. an unsupported compile / dtype
                self._cache[key] = EngineError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        value = self._cache[key]
        if isinstance(value, Exception):
            raise value
        return value


def _image(config: BenchConfig) -> np.ndarray:
    if config.image is not None:
        return load_image(config.image)
    rng = np.random.default_rng(config.seed)
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)


def run_cell(cell: Cell, res: _Resources, image: np.ndarray) -> dict:
    config, device = res.config, res.device
    if cell.implementation == "reference":
        reason = why_no_reference(cell.model)
        if reason:
            raise EngineError(reason)
        if cell.input_size not in (None, get_entry(cell.model).spec.input_size):
            raise EngineError("the reference runs at the model's own input size only")
        if cell.precision == "int8":
            raise EngineError("the reference has no int8 path")
    model = res.get(("model", cell.model, cell.input_size),
                    lambda: _build_model(cell.model, cell.input_size, device, config.seed))
    if cell.implementation == "reference":
        impl = res.get(("reference", cell.model, cell.input_size), lambda: reference_workloads(model))
        describe = f"{impl.module} eager"
        scope = lambda: autocast(device, cell.precision)  # noqa: E731
    else:
        engine = res.get(("engine", cell.model, cell.input_size, cell.engine, cell.precision),
                         lambda: _make_engine(model, cell, config))
        impl = SwiftsamWorkloads(model, engine)
        describe = engine.describe()
        scope = contextlib.nullcontext
    size = model.spec.input_size
    gen = torch.Generator().manual_seed(config.seed)
    if cell.stage == "encoder":
        x = torch.randn(cell.batch_size, 3, size, size, generator=gen).to(device)
        fn, count, unit = impl.encoder(x), cell.batch_size, "img/s"
    elif cell.stage == "decoder":
        emb_key = ("embedding", cell.model, cell.input_size)
        emb = res.get(emb_key, lambda: model.eval().forward_image(  # every feature level (SAM 2: three)
            torch.randn(1, 3, size, size, generator=gen).to(device)).map(torch.Tensor.detach))
        boxes = example_boxes(cell.prompts, image.shape[:2], config.seed)
        fn, count, unit = impl.decoder(emb, boxes, image.shape[:2]), cell.prompts, "prompts/s"
    else:
        images = [image] * cell.batch_size
        boxes = np.repeat(example_boxes(1, image.shape[:2], config.seed), cell.batch_size, axis=0)
        fn, count, unit = impl.pipeline(images, boxes), cell.batch_size, "img/s"

    def call():
        with scope():
            return fn()

    with torch.inference_mode():
        timing = measure(call, device, config.warmup, config.iterations, config.min_time_s)
    row = {**asdict(cell), "input_size": size, "describe": describe, **timing.as_dict()}
    row["throughput"] = count / timing.median_s
    row["throughput_unit"] = unit
    return row


def speedups(rows: list[dict]) -> list[dict]:
    """For every swiftsam row with a matching reference row: reference time / swiftsam time, against
    the reference at the same precision and against the reference in fp32."""
    def key(r, precision):
        return (r["model"], r["input_size"], r["stage"], r["batch_size"], r["prompts"], precision)

    ref = {key(r, r["precision"]): r for r in rows if r["implementation"] == "reference"}
    out = []
    for r in rows:
        if r["implementation"] != "swiftsam":
            continue
        same, fp32 = ref.get(key(r, r["precision"])), ref.get(key(r, "fp32"))
        if same is None and fp32 is None:
            continue
        out.append({
            "model": r["model"], "engine": r["engine"], "precision": r["precision"], "input_size": r["input_size"],
            "stage": r["stage"], "batch_size": r["batch_size"], "prompts": r["prompts"],
            "speedup_vs_reference": same["median_s"] / r["median_s"] if same else None,
            "speedup_vs_reference_fp32": fp32["median_s"] / r["median_s"] if fp32 else None,
        })
    return out


def best_vs_best(rows: list[dict]) -> list[dict]:
    """Per model, input size, stage, batch and prompt count: swiftsam's fastest row (any engine, any precision)
    against the reference's fastest (any precision), and the ratio of their times."""
    best: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["model"], r["input_size"], r["stage"], r["batch_size"], r["prompts"])
        slot = best.setdefault(key, {})
        if r["implementation"] not in slot or r["median_s"] < slot[r["implementation"]]["median_s"]:
            slot[r["implementation"]] = r
    out = []
    for (model, size, stage, batch, prompts), slot in best.items():
        ours, ref = slot.get("swiftsam"), slot.get("reference")
        if ours is None or ref is None:
            continue
        out.append({"model": model, "input_size": size, "stage": stage, "batch_size": batch, "prompts": prompts,
                    "swiftsam_engine": ours["engine"], "swiftsam_precision": ours["precision"],
                    "swiftsam_median_s": ours["median_s"], "reference_precision": ref["precision"],
                    "reference_median_s": ref["median_s"], "speedup": ref["median_s"] / ours["median_s"]})
    return out


def _settings(config: BenchConfig) -> dict:
    return {k: getattr(config, k) for k in MEASUREMENT_KEYS}


def _load_previous(path: Path, config: BenchConfig) -> tuple[list[dict], list[dict]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--resume: cannot read {path} ({e}); delete it or choose another --out.") from None
    if doc.get("schema") != SCHEMA:
        raise InputError(f"--resume: {path} is not a {SCHEMA} result; choose another --out.")
    before = {k: doc.get("config", {}).get(k) for k in MEASUREMENT_KEYS}
    if before != _settings(config):
        diff = ", ".join(f"{k} {before[k]!r} -> {v!r}" for k, v in _settings(config).items() if before[k] != v)
        raise InputError(f"--resume: {path} was measured with other settings ({diff}); use the same settings, "
                         f"or another --out.")
    return doc.get("results", []), doc.get("skipped", [])


def run_bench(config: BenchConfig, out: str | os.PathLike[str] | None = None, resume: bool = False,
              progress: bool = True) -> dict:
    """Run the sweep; return (and, with ``out``, keep writing) the results document."""
    config.validate()
    device = torch.device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    rows: list[dict] = []
    skipped: list[dict] = []
    if out is not None and Path(out).exists():
        if not resume:
            raise InputError(f"{out} exists: pass --resume to continue that sweep, or choose another --out.")
        rows, skipped = _load_previous(Path(out), config)
    done = {r["cell_key"] for r in rows + skipped}  # rows hold the resolved input size, cell_key the asked one
    cells = [c for c in plan(config) if c.key not in done]
    doc = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(device), "config": asdict(config), "results": rows, "skipped": skipped,
           "speedups": speedups(rows), "best_vs_best": best_vs_best(rows)}
    res = _Resources(config, device)
    image = _image(config)
    for cell in _progress(cells, progress):
        try:
            row = run_cell(cell, res, image)
            row["cell_key"] = cell.key
            rows.append(row)
        except SwiftSamError as e:
            skipped.append({**asdict(cell), "cell_key": cell.key, "reason": str(e)})
        except Exception as e:  # e.g. out of memory, a kernel this device lacks, reference code failing in bf16
            if cell.implementation == "swiftsam" and not isinstance(e, (RuntimeError, NotImplementedError)):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            who = "the reference code failed: " if cell.implementation == "reference" else ""
            skipped.append({**asdict(cell), "cell_key": cell.key, "reason": f"{who}{type(e).__name__}: {first}"})
        doc["speedups"] = speedups(rows)
        doc["best_vs_best"] = best_vs_best(rows)
        if out is not None:
            _write(doc, out)
    if out is not None:
        _write(doc, out)
    return doc


def _progress(cells: list[Cell], enabled: bool) -> Iterator[Cell]:
    if not enabled:
        yield from cells
        return
    from tqdm import tqdm

    bar = tqdm(cells, desc="bench", unit="cell")
    for cell in bar:
        bar.set_postfix_str(f"{cell.model} {cell.implementation}/{cell.engine} {cell.precision} {cell.stage} "
                            f"bs{cell.batch_size}" + (f" n{cell.prompts}" if cell.stage == "decoder" else ""))
        yield cell


def _write(doc: dict, out: str | os.PathLike[str]) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
