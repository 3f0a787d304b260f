"""ONNX export: the image encoder, the batched prompt decoder and SAM's published decoder interface.

Graphs are traced from the same modules the torch engine runs, checked with ``onnx.checker`` and
scanned for the ops that break TensorRT builds (see ``BANNED_OPS``) before they are kept.
Files appear in the output folder only once written and checked.
"""

from __future__ import annotations

import functools
import hashlib
import math
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EngineError
from ..modeling.contract import ModelContract
from ..modeling.prompt_decoder import PromptDecoder, best_tokens, take_tokens
from ..modeling.segmenter import Segmenter
from ..modeling.stages import Stage, sam_stages
from ..utils import atomic_path, host_tag, pid_alive, remove_stale_parts

OPSET = 17
MANIFEST = "manifest.json"
FORMAT = "swiftsam-onnx/1"
# an export traces into ".export-<host>-<pid>-<random>" beside its graphs; a killed export leaves it behind
_SCRATCH = re.compile(r"^\.export-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")
STALE_SCRATCH_S = 600  # a scratch folder whose owner cannot be checked (other host, older swiftsam) is stale after

# Ops that TensorRT cannot build from (or builds only for fixed shapes) in the SAM decoders people export.
BANNED_OPS = {
    "OneHot": "TensorRT's OneHot needs a constant depth; SAM's repeat_interleave exports one",
    "Tile": "data-dependent Tile breaks TensorRT shape inference (use Expand)",
    "NonZero": "output shape depends on the data",
    "Loop": "control flow",
    "If": "control flow",
    "Scan": "control flow",
}

# (input names, output names) of each exported graph: the stages' (modeling.stages), which spell SAM's flat
# prompt ABI from modeling.prompt_decoder
_STAGES = sam_stages(ModelContract())
ENCODER_IO, DECODER_IO, SAM_DECODER_IO = ((_STAGES[s].input_names, _STAGES[s].output_names)
                                          for s in ("encode", "decode", "sam_decode"))


class SamOnnxDecoder(nn.Module):
    """SAM's published decoder interface, so existing ONNX consumers run our graphs unchanged.

    Inputs: image_embeddings 1x256x64x64, point_coords 1xNx2 (prompt frame), point_labels 1xN,
    mask_input 1x1x256x256, has_mask_input (1,), orig_im_size (2,) float (H, W).
    Outputs: masks (logits at the original size), iou_predictions, low_res_masks; all 4 tokens,
    or with ``return_single_mask`` SAM's rule: the single-mask output (the output policy's "single": token 0,
    or the best of 1..3 for a ``multimask_only`` model) when there are more than 2 points (padding
    included), else the best of tokens 1..3.
    """

    def __init__(self, model: Segmenter, return_single_mask: bool = False) -> None:
        super().__init__()
        self.decoder = PromptDecoder(model)
        self.prompt_size = model.spec.prompt_size
        self.geometry = model.spec.geometry
        self.return_single_mask = return_single_mask
        self.multimask_only = model.multimask_only

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the stage's order: the embedding, SAM's flat prompts, SAM 2's high-res levels, orig_im_size (a
        # variadic forward: the exporter then adds no defaults of keyword parameters as inputs)
        *decoder_inputs, orig_im_size = inputs
        point_labels = decoder_inputs[2]
        low, iou = self.decoder(*decoder_inputs)[:2]
        if self.return_single_mask:
            n_points = torch.ones_like(point_labels).sum(dim=1)
            single = best_tokens(iou, "single", multimask_only=self.multimask_only)
            best_multi = best_tokens(iou, "multimask", multimask_only=self.multimask_only)
            low, iou = take_tokens(low, iou, torch.where(n_points > 2.5, single, best_multi))
        return self.upscale(low, orig_im_size), iou, low

    def upscale(self, low: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        p = self.prompt_size
        hw = orig_im_size.to(torch.int64)
        if self.geometry == "square":  # the image fills the frame: straight to its size (transforms.postprocess_masks)
            return F.interpolate(low, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        masks = F.interpolate(low, size=(p, p), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        resized = torch.floor(size * (p / size.max()) + 0.5).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]  # 0-d tensors: traced as graph inputs, not constants
        return F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)


class DecodeGraph(nn.Module):
    """The ``decode`` stage as traced: ``PromptDecoder`` with its inputs in the stage's order (a variadic forward,
    so the exporter adds no keyword defaults as graph inputs)."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.decoder = PromptDecoder(model)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.decoder(*inputs)


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise EngineError("ONNX export needs the onnx package: pip install 'swiftsam[onnx]' (onnx, onnxruntime).") from None
    return onnx


def banned_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Count the banned ops in a graph (subgraphs included)."""
    onnx = _require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    found: dict[str, int] = {}

    def visit(graph) -> None:
        for node in graph.node:
            if node.op_type in BANNED_OPS:
                found[node.op_type] = found.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.g.node:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    return found


def check_graph(path: str | os.PathLike[str]) -> None:
    """``onnx.checker`` plus the banned-op scan; raises EngineError on failure."""
    onnx = _require_onnx()
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # onnx raises ValidationError and friends
        raise EngineError(f"exported graph {path} failed onnx.checker: {e}") from None
    found = banned_ops(path)
    if found:
        why = "; ".join(f"{op} x{n} ({BANNED_OPS[op]})" for op, n in found.items())
        raise EngineError(f"exported graph {path} contains ops that break TensorRT builds: {why}")


def _trace(module: nn.Module, args: tuple, path: Path, io: tuple[list[str], list[str]],
           dynamic_axes: dict, opset: int) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes we keep fixed on purpose
        torch.onnx.export(
            module, args, str(path), input_names=io[0], output_names=io[1], dynamic_axes=dynamic_axes,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


# export part -> (file, the model stage it holds, the module traced for it)
EXPORTS: dict[str, tuple[str, str, Callable[[Segmenter, bool], nn.Module]]] = {
    "encoder": ("encoder.onnx", "encode", lambda model, single: model.image_stage()),
    "decoder": ("decoder.onnx", "decode", lambda model, single: DecodeGraph(model)),
    "sam_decoder": ("sam_decoder.onnx", "sam_decode", lambda model, single: SamOnnxDecoder(model, single)),
}
PARTS = tuple(EXPORTS)


def _example_inputs(stage: Stage, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Inputs to trace ``stage`` with: every dynamic axis above 1 where it can be, valid prompt values."""
    shapes = stage.input_shapes({"batch": 1, "embedding_batch": 1, "prompts": 2, "points": 3})
    g = torch.Generator().manual_seed(0)
    values = []
    for name, shape in shapes.items():
        n = math.prod(shape)
        if name == "point_coords":
            t = torch.rand(shape, generator=g) * 1000
        elif name == "point_labels":  # clicks, box corners and padding
            t = torch.tensor([1.0, 0.0, 2.0, 3.0, -1.0] * n)[:n].reshape(shape)
        elif name == "has_mask_input":
            t = torch.ones(shape)
        elif name == "orig_im_size":
            t = torch.tensor([480.0, 640.0])
        else:
            t = torch.zeros(shape)
        values.append(t.to(device))
    return tuple(values)


def export_part(model: Segmenter, part: str, path: Path, opset: int = OPSET, sam_single_mask: bool = False) -> Stage:
    """Trace one export part of ``model`` (its stage's names, shapes and dynamic axes) into ``path``."""
    _, stage_name, module = EXPORTS[part]
    stage = sam_stages(model.contract, sam_single_mask)[stage_name]
    was_training = model.training
    try:  # a fresh wrapper module is in training mode, which the exporter would leave on the model's modules
        _trace(module(model, sam_single_mask).eval(), _example_inputs(stage, model.device), path,
               (stage.input_names, stage.output_names), stage.dynamic_axes(), opset)
    finally:
        model.train(was_training)
    return stage


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the architecture's state (names, shapes, values): the key of exported caches."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    spec = getattr(model, "spec", None)
    h.update(repr(spec).encode())
    return h.hexdigest()


def export_onnx(
    model: Segmenter,
    out_dir: str | os.PathLike[str],
    parts: Iterable[str] = ("encoder", "decoder", "sam_decoder"),
    *,
    opset: int = OPSET,
    sam_single_mask: bool = False,
) -> dict:
    """Export ``parts`` of ``model`` into ``out_dir`` with a ``manifest.json``; returns the manifest.

    Each graph is traced into a scratch folder, validated, then moved into place, so a failed or
    interrupted export never leaves a half-written graph under its final name.
    """
    _require_onnx()
    if opset < 17:
        raise EngineError(f"opset must be >= 17 (LayerNormalization), got {opset}.")
    parts = list(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise EngineError(f"unknown export part(s) {unknown}; choose from {sorted(PARTS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    from ..version import __version__

    manifest = {
        "format": FORMAT,
        "model": model.zoo_name,
        "swiftsam": __version__,
        "fingerprint": weights_fingerprint(model),
        "weights": getattr(model, "weights_source", None),  # where the weights came from, for messages
        "opset": opset,
        "spec": {"input_size": model.spec.input_size, "prompt_size": model.spec.prompt_size,
                 "pixel_mean": list(model.spec.pixel_mean), "pixel_std": list(model.spec.pixel_std)},
        "multimask_only": model.multimask_only,
        "contract": model.contract.to_dict(),  # everything a Predictor needs to run these graphs alone
        "sam_single_mask": sam_single_mask,
        "quantization": getattr(model, "quantization", None),
        "files": {},
    }
    remove_stale_temporaries(out)
    with tempfile.TemporaryDirectory(prefix=f".export-{host_tag()}-{os.getpid()}-", dir=out) as scratch:
        for part in parts:
            filename = EXPORTS[part][0]
            tmp = Path(scratch) / filename
            try:
                stage = export_part(model, part, tmp, opset=opset, sam_single_mask=sam_single_mask)
            except EngineError:
                raise
            except Exception as e:
                raise EngineError(f"exporting the {part} of {model.zoo_name or 'the model'} failed: {e}") from e
            check_graph(tmp)
            for produced in sorted(Path(scratch).iterdir()):  # the graph plus any external-data file
                os.replace(produced, out / produced.name)
            manifest["files"][part] = {"file": filename, "stage": stage.name, "inputs": stage.input_names,
                                       "outputs": stage.output_names}
    previous = read_manifest(out) if (out / MANIFEST).exists() else None
    if previous and previous.get("fingerprint") == manifest["fingerprint"]:
        manifest["files"] = {**previous.get("files", {}), **manifest["files"]}
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return manifest


def remove_stale_temporaries(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed exports left in ``out_dir``: their scratch folders (``.export-*``, when the process
    that made one is gone, or its owner cannot be checked and it is older than ``STALE_SCRATCH_S``) and
    ``manifest.json`` temporaries. Live exports into the same folder are left alone. Returns what was removed."""
    out = Path(out_dir)
    removed = remove_stale_parts(out, [MANIFEST], older_than_s=60)
    for d in out.glob(".export-*"):
        try:
            if not d.is_dir():
                continue
            m = _SCRATCH.match(d.name)
            if m and m["host"] == host_tag():
                stale = not pid_alive(int(m["pid"]))
            else:
                stale = time.time() - d.stat().st_mtime > STALE_SCRATCH_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def read_manifest(out_dir: str | os.PathLike[str]) -> dict:
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"{path} is missing or unreadable ({e}); export the model again.") from None
    if manifest.get("format") != FORMAT:
        raise EngineError(f"{path} is not a swiftsam ONNX export ({FORMAT}); export the model again.")
    return manifest


def check_export_matches(folder: str | os.PathLike[str], manifest: dict, model: Segmenter) -> None:
    """Refuse an export folder made from other weights (or another input size) than ``model``: its graphs
    would run those weights silently."""
    expected = manifest.get("fingerprint")
    if getattr(model, "export_dir", None) is not None and Path(model.export_dir) == Path(folder):
        return  # the weightless model read from this very folder (swiftsam.load_export)
    actual = weights_fingerprint(model)
    if not expected or expected == actual:
        return
    theirs = manifest.get("weights") or manifest.get("model") or "another model"
    ours = getattr(model, "weights_source", None) or model.zoo_name or "the model"
    size = (manifest.get("spec") or {}).get("input_size")
    sizes = (f" It was also exported at input size {size} and the model runs at {model.spec.input_size} "
             f"(--input-size {size} if these are the same weights)."
             if size and size != model.spec.input_size else "")
    raise EngineError(
        f"{folder} holds graphs exported from other weights than the model loaded here: the export is of {theirs} "
        f"(weights fingerprint {expected}), the model is {ours} (fingerprint {actual}).{sizes} Export these weights "
        f"into a folder of their own (swiftsam export {model.zoo_name or 'MODEL'} --checkpoint ... --out DIR) and pass "
        f"that as --onnx-dir, or load the weights this folder was exported from."
    )


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A short hash of the source that defines the exported graphs (``swiftsam/modeling`` and
    ``swiftsam/export``): caches of exported graphs are keyed by it too, so a graph traced by other code (an
    upgrade, a fix) is exported again instead of silently reused."""
    h = hashlib.blake2b(digest_size=6)
    package = Path(__file__).resolve().parent.parent
    for sub in ("modeling", "export"):
        for path in sorted((package / sub).rglob("*.py")):
            h.update(path.relative_to(package).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def cached_export(model: Segmenter, root: Path, parts: Iterable[str]) -> Path:
    """Export once per (model, weights, graph code) into ``root/<name>-<fingerprint>-<code>``; later calls reuse
    it."""
    fingerprint = weights_fingerprint(model)
    folder = root / f"{model.zoo_name or 'model'}-{fingerprint}-{code_fingerprint()}"
    parts = list(parts)
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        have = manifest.get("files", {})
        if manifest.get("fingerprint") == fingerprint and all((folder / have[p]["file"]).exists() for p in parts if p in have):
            missing = [p for p in parts if p not in have]
            if not missing:
                return folder
            parts = missing
    export_onnx(model, folder, parts)
    return folder
