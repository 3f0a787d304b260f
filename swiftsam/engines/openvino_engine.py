"""OpenVINO engine: the model's stages on Intel's CPU runtime, in fp32, bf16 or INT8.

The stages (``model.stages``: ``encode`` and ``decode``, inputs and outputs by name) are converted once into
OpenVINO IR, from our ONNX export (``source="onnx"``, the default: the same graphs onnxruntime runs) or
straight from the torch modules (``source="torch"``, ``ov.convert_model``), and kept under
``$SWIFTSAM_HOME/openvino/<model>-<weights fingerprint>-ov<openvino version>-<source>/``. Compiled models are cached
beside them per precision (OpenVINO's model cache), so a second engine for the same weights starts in a
fraction of the first one's time.

INT8 runs an encoder quantized by NNCF post-training quantization on calibration images
(``swiftsam quantize MODEL --backend openvino``, ``swiftsam.quant.openvino_int8``), which writes
``encoder-int8.xml`` into the same folder, or the QDQ encoder of a ``swiftsam quantize --backend onnxruntime``
folder (``onnx_dir=``). The prompt decoder always runs in fp32 (prompt coordinates lose whole pixels in
16-bit, and it is cheap).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError
from ..export.onnx import (EXPORTS, _example_inputs, cached_export, check_export_matches, read_manifest,
                           code_fingerprint, weights_fingerprint)
from ..modeling.sam import Sam
from ..optional import require
from ..utils import atomic_path
from ..zoo.hub import swiftsam_home
from .base import StageEngine

PRECISIONS = ("fp32", "bf16", "int8")
# INT8 is a model's default only where its NNCF encoder keeps the box-protocol agreement with fp32 (mIoU between
# the two models' masks, coco-mini val, swiftsam.eval.agreement) at or above this; measured agreements per zoo name
# or family (a name wins), benchmarks/engines.md. Models without trained weights here cannot be judged
# (agreement on random weights means nothing), so they are not listed.
INT8_MIN_AGREEMENT = 0.98
INT8_AGREEMENT: dict[str, float] = {
    "swiftsam-r18": 0.9966,  # bundled weights; 939 objects of coco-mini val, 64 calibration images from its train
}
SOURCES = ("onnx", "torch")
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
FORMAT = "swiftsam-openvino/1"
MANIFEST = "manifest.json"
INT8_ENCODER = "encoder-int8.xml"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: what the non-quantized ops run in


def _ov():
    return require("openvino", "the openvino engine")


def openvino_version() -> str:
    """The installed OpenVINO's release (``2026.4.1``), the part of the cache key that changes the IR."""
    return _ov().__version__.split("-")[0]


def openvino_cache_dir() -> Path:
    return swiftsam_home() / "openvino"


def ir_folder(model: Sam, source: str = "onnx") -> Path:
    """Where ``model``'s IR lives: keyed by zoo name, weights fingerprint, graph code, OpenVINO version and
    source."""
    return openvino_cache_dir() / (f"{model.zoo_name or 'model'}-{weights_fingerprint(model)}-{code_fingerprint()}"
                                   f"-ov{openvino_version()}-{source}")


def cpu_capabilities() -> list[str]:
    """OpenVINO's view of this CPU (``BF16``, ``INT8``, ``FP32`` ...)."""
    return list(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def read_ir_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if manifest.get("format") == FORMAT else {}


def write_ir_manifest(folder: Path, manifest: dict) -> None:
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))


def save_ir(ov_model, path: Path) -> None:
    """Write ``path`` (.xml + .bin) atomically enough: both files are written under temporary names and
    moved into place, .bin first, so a reader never finds an .xml without its weights."""
    ov = _ov()
    tmp_xml = path.with_name(f".{path.stem}-{os.getpid()}.xml")
    try:
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)  # fp16 weights would cost fp32 parity
        os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp_xml, path)
    finally:
        for p in (tmp_xml, tmp_xml.with_suffix(".bin")):
            p.unlink(missing_ok=True)


def _name_tensors(ov_model, stage) -> None:
    """Give a model converted from torch the stage's input and output names (ONNX graphs already have them)."""
    for port, name in zip(ov_model.inputs, stage.input_names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, stage.output_names, strict=True):
        port.get_tensor().set_names({name})


def _convert_from_torch(model: Sam, part: str):
    ov = _ov()
    _, stage_name, make = EXPORTS[part]
    stage = model.stages[stage_name]
    example = _example_inputs(stage, model.device)
    shapes = [ov.PartialShape([-1 if isinstance(d, str) else d for d in t.shape]) for t in stage.inputs]
    with torch.no_grad():
        ov_model = ov.convert_model(make(model, False).eval(), example_input=example,
                                    input=[(s, ov.Type.f32) for s in shapes])
    _name_tensors(ov_model, stage)
    return ov_model


def convert_ir(model: Sam, source: str = "onnx") -> Path:
    """``model``'s encoder and decoder as fp32 OpenVINO IR in ``ir_folder(model)`` (converted once; later calls
    reuse it). Returns the folder."""
    ov = _ov()
    if source not in SOURCES:
        raise EngineError(f"source must be one of {', '.join(SOURCES)}, got {source!r}.")
    folder = ir_folder(model, source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = read_ir_manifest(folder)
        have = manifest.get("files", {})
        parts = [p for p in ("encoder", "decoder") if p not in have or not (folder / have[p]).exists()]
        if not parts:
            return folder
        onnx_folder = None
        for part in parts:
            if source == "onnx":
                if onnx_folder is None:
                    from .ort_engine import onnx_cache_dir

                    onnx_folder = cached_export(model, onnx_cache_dir(), ("encoder", "decoder"))
                ov_model = ov.convert_model(str(onnx_folder / EXPORTS[part][0]))
            else:
                ov_model = _convert_from_torch(model, part)
            save_ir(ov_model, folder / f"{part}.xml")
            have[part] = f"{part}.xml"
        manifest = {**manifest, "format": FORMAT, "model": model.zoo_name, "fingerprint": weights_fingerprint(model),
                    "openvino": openvino_version(), "source": source, "files": have}
        write_ir_manifest(folder, manifest)
    except OSError as e:
        raise EngineError(
            f"cannot write the OpenVINO cache {folder} ({e.strerror or e}): set SWIFTSAM_HOME to a writable folder "
            f"(export SWIFTSAM_HOME=/path/to/writable/folder)."
        ) from None
    return folder


def default_precision(model: Sam, source: str = "onnx") -> str:
    """int8 for a model or family whose measured INT8 agreement with fp32 is >= ``INT8_MIN_AGREEMENT``, once its INT8
    encoder exists (``swiftsam quantize MODEL --backend openvino``); fp32 otherwise."""
    if not model.zoo_name:
        return "fp32"
    from ..zoo import get_entry

    try:
        family = get_entry(model.zoo_name).family
    except Exception:  # a name outside the zoo
        return "fp32"
    agreement = INT8_AGREEMENT.get(model.zoo_name, INT8_AGREEMENT.get(family, 0.0))
    if agreement >= INT8_MIN_AGREEMENT and (ir_folder(model, source) / INT8_ENCODER).exists():
        return "int8"
    return "fp32"


class OpenVINOEngine(StageEngine):
    """Runs the ``encode`` and ``decode`` stages with OpenVINO on the CPU.

    ``precision``: fp32, bf16 (CPUs with BF16 kernels, e.g. AVX512-BF16 or AMX; an EngineError elsewhere) or
    int8 (an NNCF-quantized encoder made by ``swiftsam quantize MODEL --backend openvino``, or the QDQ encoder in
    ``onnx_dir``); ``default``: int8 for the models in ``INT8_AGREEMENT`` whose INT8 encoder exists (and for a
    QDQ ``onnx_dir``), else fp32. ``source``: onnx (our ONNX export, default) or torch (``ov.convert_model`` on
    the modules). ``threads`` (``INFERENCE_NUM_THREADS``), ``streams`` (``NUM_STREAMS``) and ``hint``
    (latency | throughput, ``PERFORMANCE_HINT``) are OpenVINO's CPU settings. ``onnx_dir``: run the graphs of
    a ``swiftsam export`` / ``swiftsam quantize`` folder instead of converting the model. ``cache``: keep
    compiled models under the IR folder (OpenVINO's model cache; for ``onnx_dir``, a folder of its own under
    ``$SWIFTSAM_HOME/openvino``, never inside the export). The encoder is compiled once per batch size
    it sees (static shapes are OpenVINO's fast path); the decoder keeps its dynamic prompt and point axes and runs
    at most ``decode_chunk`` prompts per call (its memory grows with the prompts). ``decoder_precision``: fp32 or
    bf16 (OpenVINO's bf16 inference precision for the decoder graph: ~1.5x faster on a CPU with bf16 kernels; its
    agreement with fp32 is measured in benchmarks/engines.md); default bf16 when ``precision`` is bf16, else fp32
    (the INT8 encoders' decoder stays fp32).
    """

    name = "openvino"

    def __init__(
        self,
        model: Sam,
        precision: str = "default",
        threads: int | None = None,
        streams: int | None = None,
        hint: str = "latency",
        source: str = "onnx",
        onnx_dir: str | os.PathLike[str] | None = None,
        cache: bool = True,
        decode_chunk: int = 16,
        decoder_precision: str | None = None,
    ) -> None:
        super().__init__(model)
        ov = _ov()
        if precision == "default":
            if onnx_dir is None:
                precision = default_precision(model, source)
            else:  # the folder's encoder decides: a QDQ one (swiftsam quantize) runs int8
                precision = "int8" if read_manifest(Path(onnx_dir)).get("quantization") else "fp32"
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {', '.join(PRECISIONS)} (or default), got {precision!r}.")
        if decoder_precision is None:
            decoder_precision = _default_decoder_precision(precision)
        if decoder_precision not in ("fp32", "bf16"):
            raise EngineError(f"decoder_precision must be fp32 or bf16, got {decoder_precision!r}.")
        if hint not in HINTS:
            raise EngineError(f"hint must be one of {', '.join(HINTS)}, got {hint!r}.")
        if source not in SOURCES:
            raise EngineError(f"source must be one of {', '.join(SOURCES)}, got {source!r}.")
        for what, value in (("threads", threads), ("streams", streams), ("decode_chunk", decode_chunk)):
            if value is not None and value < 1:
                raise EngineError(f"{what} must be >= 1, got {value}.")
        if model.device.type != "cpu":
            raise EngineError(f"the openvino engine runs on the CPU; the model is on {model.device} "
                              f"(move it with model.to('cpu'), or use engine='tensorrt' / 'torch' on a GPU).")
        self.core = ov.Core()
        if "bf16" in (precision, decoder_precision) and "BF16" not in self.core.get_property(
                "CPU", "OPTIMIZATION_CAPABILITIES"):
            raise EngineError("this CPU has no bf16 kernels for OpenVINO (it needs AVX512-BF16 or AMX); use "
                              "precision='fp32' or 'int8'.")
        self.precision, self.threads, self.streams, self.hint, self.source = precision, threads, streams, hint, source
        self.decoder_precision = decoder_precision
        self.decode_chunk = decode_chunk
        self._stages = model.stages
        if onnx_dir is not None:
            folder = Path(onnx_dir)
            encoder_path, decoder_path, cache_root = self._from_export(folder)
        else:
            folder = convert_ir(model, source)
            encoder_path, decoder_path, cache_root = folder / "encoder.xml", folder / "decoder.xml", folder
            if precision == "int8":
                encoder_path = folder / INT8_ENCODER
                if not encoder_path.exists():
                    raise EngineError(
                        f"no INT8 OpenVINO encoder for {model.zoo_name or 'this model'} yet: make one with NNCF on "
                        f"calibration images (swiftsam quantize {model.zoo_name or 'MODEL'} --backend openvino --calib "
                        f"DIR; it is cached in {folder}), or pass onnx_dir= a QDQ folder from swiftsam quantize."
                    )
        self.folder = folder  # the IR folder, or the export folder it runs
        self.cache_dir = (cache_root / "compiled" / precision) if cache else None
        try:
            self._encoder_model = self.core.read_model(str(encoder_path))
            self._decoder_model = self.core.read_model(str(decoder_path))
        except Exception as e:  # OpenVINO raises RuntimeError with a long C++ trace
            raise EngineError(f"OpenVINO cannot read {encoder_path.parent} ({_first_line(e)}); delete the folder and "
                              f"it is converted again.") from None
        self._encoders: dict[int, tuple] = {}  # batch size -> (compiled model, infer request)
        self._decoder = self._compile(self._decoder_model, decoder_precision)
        self._decoder_request = self._decoder.create_infer_request()

    def _from_export(self, folder: Path) -> tuple[Path, Path, Path]:
        manifest = read_manifest(folder)
        if self.model.zoo_name and manifest.get("model") and manifest["model"] != self.model.zoo_name:
            raise EngineError(f"{folder} holds an export of {manifest['model']}, not {self.model.zoo_name}.")
        missing = [p for p in ("encoder", "decoder") if p not in manifest.get("files", {})]
        if missing:
            raise EngineError(f"{folder} has no {' / '.join(missing)} graph; export it with swiftsam export.")
        check_export_matches(folder, manifest, self.model)
        quantized = bool(manifest.get("quantization"))
        if quantized and self.precision != "int8":
            raise EngineError(f"{folder} holds an INT8 (QDQ) encoder: use precision='int8' with it, or a float "
                              f"export for {self.precision}.")
        if self.precision == "int8" and not quantized:
            raise EngineError(f"{folder} holds a float encoder: INT8 needs a QDQ folder from swiftsam quantize "
                              f"--backend onnxruntime, or no onnx_dir and swiftsam quantize --backend openvino.")
        name, fingerprint = manifest.get("model") or "model", manifest.get("fingerprint") or "export"
        cache_root = openvino_cache_dir() / f"{name}-{fingerprint}-ov{openvino_version()}-export"
        return folder / manifest["files"]["encoder"]["file"], folder / manifest["files"]["decoder"]["file"], cache_root

    def _config(self, precision: str) -> dict:
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "PERFORMANCE_HINT": HINTS[self.hint]}
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.streams is not None:
            config["NUM_STREAMS"] = self.streams
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def _compile(self, ov_model, precision: str):
        try:
            return self.core.compile_model(ov_model, "CPU", self._config(precision))
        except Exception as e:
            raise EngineError(f"OpenVINO could not compile {self.model.zoo_name or 'the model'} for the CPU in "
                              f"{precision} ({_first_line(e)}).") from None

    def _encoder_for(self, batch: int):
        if batch not in self._encoders:
            m = self._encoder_model.clone()
            s = self._stages["encode"].inputs[0]
            m.reshape({s.name: [batch if isinstance(d, str) else d for d in s.shape]})
            compiled = self._compile(m, self.precision)
            self._encoders[batch] = (compiled, compiled.create_infer_request())
        return self._encoders[batch][1]

    def _run(self, stage: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run ``stage`` (``model.stages``: its input and output names) on float32 CPU arrays; the decoder in
        chunks of ``decode_chunk`` prompts (its graph copies the image side per prompt: 64 prompts at once take
        ~4 GB, in chunks of 16 a quarter of that, and no more time)."""
        n, c = (int(inputs[1].shape[0]), self.decode_chunk) if stage == "decode" else (0, 0)
        if c and n > c:  # prompt tensors are sliced; image-side tensors too when given per prompt, else shared
            parts = [self._run_once(stage, *(t[j:j + c] if int(t.shape[0]) == n else t for t in inputs))
                     for j in range(0, n, c)]
            return [torch.cat(outs) for outs in zip(*parts, strict=True)]
        return self._run_once(stage, *inputs)

    def _run_once(self, stage: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        spec = self._stages[stage]
        request = self._encoder_for(int(inputs[0].shape[0])) if stage == "encode" else self._decoder_request
        feed = {name: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
                for name, t in zip(spec.input_names, inputs, strict=True)}
        request.infer(feed)
        # copies: the request's output buffers are reused by its next call
        return [torch.from_numpy(np.array(request.get_tensor(name).data)) for name in spec.output_names]

    def describe(self) -> str:
        extras = [self.precision, self.hint]
        if self.decoder_precision != _default_decoder_precision(self.precision):
            extras.append(f"decoder {self.decoder_precision}")
        if self.threads:
            extras.append(f"{self.threads} threads")
        if self.streams:
            extras.append(f"{self.streams} streams")
        return f"openvino[{', '.join(extras)}]"


def _default_decoder_precision(precision: str) -> str:
    """The decoder's precision unless named: bf16 with a bf16 encoder (as the authors' code under autocast), else
    fp32 (the INT8 encoders' decoder included)."""
    return "bf16" if precision == "bf16" else "fp32"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
