"""ONNX export: the image encoder, the batched prompt decoder and SAM's published decoder interface.

Graphs are traced from the same modules the torch engine runs, checked with ``onnx.checker`` and
scanned for the ops that break TensorRT builds (see ``BANNED_OPS``) before they are kept.
Files appear in the output folder only once written and checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EngineError
from ..modeling.prompt_decoder import PromptDecoder
from ..modeling.sam import Sam
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

ENCODER_IO = (["image"], ["image_embeddings"])
DECODER_IO = (
    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
    ["low_res_masks", "iou_predictions"],
)
SAM_DECODER_IO = (
    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
    ["masks", "iou_predictions", "low_res_masks"],
)


class SamOnnxDecoder(nn.Module):
    """SAM's published decoder interface, so existing ONNX consumers run our graphs unchanged.

    Inputs: image_embeddings 1x256x64x64, point_coords 1xNx2 (prompt frame), point_labels 1xN,
    mask_input 1x1x256x256, has_mask_input (1,), orig_im_size (2,) float (H, W).
    Outputs: masks (logits at the original size), iou_predictions, low_res_masks; all 4 tokens,
    or with ``return_single_mask`` SAM's rule: token 0 when there are more than 2 points
    (padding included), else the best of tokens 1..3.
    """

    def __init__(self, model: Sam, return_single_mask: bool = False) -> None:
        super().__init__()
        self.decoder = PromptDecoder(model)
        self.prompt_size = model.spec.prompt_size
        self.return_single_mask = return_single_mask

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        low, iou = self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        if self.return_single_mask:
            n_points = torch.ones_like(point_labels).sum(dim=1)
            best_multi = iou[:, 1:].argmax(dim=1) + 1
            pick = torch.where(n_points > 2.5, torch.zeros_like(best_multi), best_multi)
            iou = iou.gather(1, pick[:, None])
            low = low.gather(1, pick[:, None, None, None].expand(-1, 1, low.shape[2], low.shape[3]))
        return self.upscale(low, orig_im_size), iou, low

    def upscale(self, low: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        p = self.prompt_size
        masks = F.interpolate(low, size=(p, p), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float32)
        resized = torch.floor(size * (p / size.max()) + 0.5).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]  # 0-d tensors: traced as graph inputs, not constants
        hw = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)


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


def _example_prompts(batch: int, points: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    coords = (torch.rand((batch, points, 2), generator=g) * 1000).to(device)
    labels = torch.tensor([1.0, 0.0, 2.0, 3.0, -1.0] * points)[: batch * points].reshape(batch, points).to(device)
    return coords, labels, torch.zeros((batch, 1, 256, 256), device=device), torch.ones(batch, device=device)


def export_encoder(model: Sam, path: Path, opset: int = OPSET) -> None:
    s = model.spec.input_size
    x = torch.zeros((1, 3, s, s), device=model.device)
    _trace(model.image_encoder, (x,), path, ENCODER_IO, {"image": {0: "batch"}, "image_embeddings": {0: "batch"}}, opset)


def export_decoder(model: Sam, path: Path, opset: int = OPSET) -> None:
    """Batched: B prompts x N points each, one shared embedding (or one per prompt)."""
    emb = torch.zeros((1, 256, 64, 64), device=model.device)
    dyn = {
        "image_embeddings": {0: "embedding_batch"},
        "point_coords": {0: "prompts", 1: "points"},
        "point_labels": {0: "prompts", 1: "points"},
        "mask_input": {0: "prompts"},
        "has_mask_input": {0: "prompts"},
        "iou_predictions": {0: "prompts"},
        "low_res_masks": {0: "prompts"},
    }
    _trace(PromptDecoder(model), (emb, *_example_prompts(2, 3, model.device)), path, DECODER_IO, dyn, opset)


def export_sam_decoder(model: Sam, path: Path, return_single_mask: bool = False, opset: int = OPSET) -> None:
    emb = torch.zeros((1, 256, 64, 64), device=model.device)
    coords, labels, mask, has = _example_prompts(1, 3, model.device)
    size = torch.tensor([480.0, 640.0], device=model.device)
    dyn = {"point_coords": {1: "points"}, "point_labels": {1: "points"},
           "masks": {2: "height", 3: "width"}}
    module = SamOnnxDecoder(model, return_single_mask)
    _trace(module, (emb, coords, labels, mask, has[:1], size), path, SAM_DECODER_IO, dyn, opset)


PARTS = {
    "encoder": ("encoder.onnx", export_encoder, ENCODER_IO),
    "decoder": ("decoder.onnx", export_decoder, DECODER_IO),
    "sam_decoder": ("sam_decoder.onnx", export_sam_decoder, SAM_DECODER_IO),
}


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
    model: Sam,
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
    from .. import __version__

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
        "sam_single_mask": sam_single_mask,
        "quantization": getattr(model, "quantization", None),
        "files": {},
    }
    remove_stale_temporaries(out)
    with tempfile.TemporaryDirectory(prefix=f".export-{host_tag()}-{os.getpid()}-", dir=out) as scratch:
        for part in parts:
            filename, fn, io = PARTS[part]
            tmp = Path(scratch) / filename
            kwargs = {"return_single_mask": sam_single_mask} if part == "sam_decoder" else {}
            try:
                fn(model, tmp, opset=opset, **kwargs)
            except EngineError:
                raise
            except Exception as e:
                raise EngineError(f"exporting the {part} of {model.zoo_name or 'the model'} failed: {e}") from e
            check_graph(tmp)
            for produced in sorted(Path(scratch).iterdir()):  # the graph plus any external-data file
                os.replace(produced, out / produced.name)
            manifest["files"][part] = {"file": filename, "inputs": io[0], "outputs": io[1]}
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


def check_export_matches(folder: str | os.PathLike[str], manifest: dict, model: Sam) -> None:
    """Refuse an export folder made from other weights (or another input size) than ``model``: its graphs
    would run those weights silently."""
    expected = manifest.get("fingerprint")
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


def cached_export(model: Sam, root: Path, parts: Iterable[str]) -> Path:
    """Export once per (model, weights) into ``root/<name>-<fingerprint>``; later calls reuse it."""
    fingerprint = weights_fingerprint(model)
    folder = root / f"{model.zoo_name or 'model'}-{fingerprint}"
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
