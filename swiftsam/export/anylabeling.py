"""``swiftsam export MODEL --format anylabeling``: graphs and a model config for X-AnyLabeling / AnyLabeling.

The labelling tools load a Segment Anything model as an encoder / decoder ONNX pair named by a YAML config;
what they feed the graphs depends on the config's ``type`` (their loaders, read for this module:
``anylabeling/services/auto_labeling/sam_onnx.py`` and ``__base__/sam2.py`` of CVHub520/X-AnyLabeling).

``type: segment_anything`` (SAM 1 families: one 256-channel embedding, ``longest_side_pad`` geometry). The tool
does no normalisation: it scales the RGB image into a 684 x 1024 canvas (``cv2.warpAffine``, black border) and
feeds that as an H x W x 3 float32 array of 0..255 values to the encoder's first input; it reads the embedding
from the first output. Our encoder takes ANY H x W x 3 float32 RGB image (dynamic H, W) and does the model's
own preprocessing inside the graph: the longer side resized to the encoder's input size with PIL's bilinear
filter (antialiased, as ``transforms.resize_longest_side``, rounded to 0..255 after each pass as PIL's 8-bit
resize), normalised with the model's pixel mean / std, zero-padded bottom / right. The decoder is SAM's
published interface (``sam_decoder.onnx``, single mask: the tool shows ``masks[0][0]``), with prompts in the
1024-pixel prompt frame and ``orig_im_size`` the canvas.

``type: segment_anything_2`` (SAM 2: three feature levels, ``square`` geometry). Here the tool DOES its own
preprocessing (``cv2.resize`` to the encoder input's static size, / 255, ImageNet mean / std, N x C x H x W), so
the encoder takes that 1 x 3 x S x S tensor and returns ``high_res_feats_0, high_res_feats_1, image_embed`` in
that order (the tool reads them by position); a model whose mean / std are not ImageNet's is renormalised inside.
The decoder takes ``image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
has_mask_input`` by position, points in the S x S encoder frame without a padding point (the graph appends it,
as the reference SAM 2 decoder graphs the tool ships do), and returns the 3 multimask outputs' low-res logits
(clamped to +-32) and their IoU predictions (the tool resizes the best one to the image).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import EngineError
from ..modeling.prompt_decoder import PromptDecoder
from ..modeling.segmenter import Segmenter
from ..transforms import resize_pil_bilinear
from ..utils import atomic_path, host_tag
from .onnx import OPSET, SamOnnxDecoder, _require_onnx, _trace, check_graph

SAM1_TYPE = "segment_anything"
SAM2_TYPE = "segment_anything_2"
CANVAS = (684, 1024)  # (h, w) the segment_anything loader scales every image into
PROMPT_FRAME = 1024  # the segment_anything loader maps prompts into a 1024-pixel frame
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the segment_anything_2 loader normalises with (0..1 units)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM2_LEVELS = ("image_embed", "high_res_feats_0", "high_res_feats_1")


class RawImageEncoder(nn.Module):
    """The ``encode`` stage behind the ``longest_side_pad`` preprocessing: H x W x 3 float32 RGB (0..255) ->
    the image embedding, as ``transforms.preprocess_image`` + the model's image stage."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        spec = model.spec
        self.size = spec.input_size
        self.stage = model.image_stage()
        for name, value in (("mean", spec.pixel_mean), ("std", spec.pixel_std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        hw = torch._shape_as_tensor(image)[:2]  # traced: H and W stay graph inputs
        hw_f = hw.to(torch.float32)
        new = torch.floor(hw_f * (self.size / hw_f.max()) + 0.5).to(torch.int64)  # transforms.resized_shape
        x = resize_pil_bilinear(image.to(torch.float32).permute(2, 0, 1), hw, new)  # 3 x h x w, as PIL's 8 bits
        x = (x[None] - self.mean) / self.std
        x = nn.functional.pad(x, (0, self.size - new[1], 0, self.size - new[0]))
        out = self.stage(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class Sam2ToolEncoder(nn.Module):
    """SAM 2's ``encode`` stage as the segment_anything_2 loader runs it: ImageNet-normalised 1 x 3 x S x S in,
    ``high_res_feats_0, high_res_feats_1, image_embed`` out."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        spec = model.spec
        self.stage = model.image_stage()
        names = [f.name for f in model.contract.features]
        self.order = [names.index(n) for n in ("high_res_feats_0", "high_res_feats_1", "image_embed")]
        tool_mean = torch.tensor(IMAGENET_MEAN) * 255.0
        tool_std = torch.tensor(IMAGENET_STD) * 255.0
        mean, std = torch.tensor(spec.pixel_mean), torch.tensor(spec.pixel_std)
        self.renormalise = not (torch.allclose(mean, tool_mean, atol=1e-3) and torch.allclose(std, tool_std, atol=1e-3))
        # x_model = (x_tool * tool_std + tool_mean - mean) / std
        self.register_buffer("a", (tool_std / std).view(1, 3, 1, 1).float(), persistent=False)
        self.register_buffer("b", ((tool_mean - mean) / std).view(1, 3, 1, 1).float(), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image * self.a + self.b if self.renormalise else image
        out = self.stage(x)
        return tuple(out[i] for i in self.order)


class Sam2ToolDecoder(nn.Module):
    """SAM 2's decoder as the segment_anything_2 loader calls it: the levels first, points in the encoder frame,
    the 3 multimask outputs (low-res logits, IoU predictions)."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.decoder = PromptDecoder(model)
        self.to_prompt_frame = model.spec.prompt_size / model.spec.input_size

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input):
        # the tool sends clicks without SAM's padding point (its reference decoder graphs append it, as SAM 2's
        # predictor does for prompts without a box)
        n = point_coords.shape[0]
        coords = torch.cat([point_coords * self.to_prompt_frame, torch.zeros_like(point_coords[:, :1])], dim=1)
        labels = torch.cat([point_labels, -torch.ones_like(point_labels[:, :1])], dim=1)
        low, iou = self.decoder(image_embed, coords, labels, mask_input, has_mask_input.expand(n),
                                high_res_feats_0, high_res_feats_1)[:2]
        return torch.clamp(low[:, 1:], -32.0, 32.0), iou[:, 1:]


def tool_type(model: Segmenter) -> str:
    """The labelling tool's model type whose input contract this model's export meets; a clear error if none."""
    contract, name = model.contract, model.zoo_name or "this model"
    names = tuple(f.name for f in contract.features)
    if len(names) == 1 and contract.image.geometry == "longest_side_pad":
        if contract.image.prompt_size != PROMPT_FRAME or tuple(contract.mask_input_size) != (256, 256):
            raise EngineError(f"{name} has a {contract.image.prompt_size}-pixel prompt frame and a "
                              f"{contract.mask_input_size} mask input; the AnyLabeling segment_anything loader "
                              f"assumes SAM's 1024 and 256 x 256, so it cannot run this model.")
        return SAM1_TYPE
    if sorted(names) == sorted(SAM2_LEVELS) and contract.image.geometry == "square":
        s = contract.image.input_size
        if tuple(contract.mask_input_size) != (s // 4, s // 4):
            raise EngineError(f"{name}'s mask input is {contract.mask_input_size}; the AnyLabeling "
                              f"segment_anything_2 loader feeds {s // 4} x {s // 4} (a quarter of the encoder input).")
        return SAM2_TYPE
    raise EngineError(
        f"{name} has no AnyLabeling export: its encoder gives {', '.join(names)} with {contract.image.geometry!r} "
        f"geometry, and the tool loads SAM 1 models (one image embedding, longest-side resize + pad) or SAM 2 "
        f"models (image_embed + two high-resolution levels, square resize). Export it with --format onnx instead.")


def _config_yaml(fields: dict) -> str:
    """Flat ``key: value`` YAML (strings JSON-quoted, which YAML reads as the same strings): no PyYAML needed."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items())


def export_anylabeling(model: Segmenter, out_dir: str | os.PathLike[str], *, name: str | None = None,
                       display_name: str | None = None, opset: int = OPSET) -> dict:
    """Write ``<name>.encoder.onnx``, ``<name>.decoder.onnx`` and ``<name>.yaml`` (the tool's model config, with
    paths relative to it) into ``out_dir``; returns the config. Graphs are traced into a scratch folder,
    checked, then moved into place; the YAML is written last."""
    _require_onnx()
    if opset < 17:
        raise EngineError(f"opset must be >= 17 (LayerNormalization), got {opset}.")
    kind = tool_type(model)
    model = model.eval()
    name = name or f"swiftsam-{model.zoo_name or 'model'}-{model.spec.input_size}"
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise EngineError(f"the model name {name!r} must be a plain file name (no path separators).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"encoder": f"{name}.encoder.onnx", "decoder": f"{name}.decoder.onnx"}
    s = model.spec.input_size
    g = torch.Generator().manual_seed(0)
    if kind == SAM1_TYPE:
        encoder = RawImageEncoder(model)
        enc_args = (torch.rand(CANVAS[0] // 2, CANVAS[1] // 2, 3, generator=g) * 255,)
        enc_io = (["image"], ["image_embeddings"])
        enc_axes = {"image": {0: "height", 1: "width"}}
        decoder = SamOnnxDecoder(model, return_single_mask=True)
        levels = {f.name: (1, f.channels, f.size, f.size) for f in model.contract.features}
        dec_args = (torch.zeros(levels["image_embeddings"]), torch.rand(1, 3, 2, generator=g) * PROMPT_FRAME,
                    torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 1, 256, 256), torch.ones(1),
                    torch.tensor([float(CANVAS[0]), float(CANVAS[1])]))
        dec_io = (["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
                  ["masks", "iou_predictions", "low_res_masks"])
        dec_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
                    "masks": {2: "height", 3: "width"}}
    else:
        encoder = Sam2ToolEncoder(model)
        enc_args = (torch.randn(1, 3, s, s, generator=g),)
        enc_io = (["image"], ["high_res_feats_0", "high_res_feats_1", "image_embed"])
        enc_axes = {}
        decoder = Sam2ToolDecoder(model)
        levels = {f.name: (1, f.channels, f.size, f.size) for f in model.contract.features}
        mh, mw = model.contract.mask_input_size
        dec_args = (torch.zeros(levels["image_embed"]), torch.zeros(levels["high_res_feats_0"]),
                    torch.zeros(levels["high_res_feats_1"]), torch.rand(1, 3, 2, generator=g) * s,
                    torch.tensor([[1.0, 0.0, -1.0]]), torch.zeros(1, 1, mh, mw), torch.zeros(1))
        dec_io = (["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input",
                   "has_mask_input"], ["masks", "iou_predictions"])
        dec_axes = {"point_coords": {0: "num_labels", 1: "num_points"},
                    "point_labels": {0: "num_labels", 1: "num_points"},
                    "mask_input": {0: "num_labels"}, "masks": {0: "num_labels"}, "iou_predictions": {0: "num_labels"}}
    was_training = model.training
    with tempfile.TemporaryDirectory(prefix=f".export-{host_tag()}-{os.getpid()}-", dir=out) as scratch:
        try:
            for part, module, args, io, axes in (("encoder", encoder, enc_args, enc_io, enc_axes),
                                                 ("decoder", decoder, dec_args, dec_io, dec_axes)):
                tmp = Path(scratch) / files[part]
                try:
                    _trace(module.eval(), tuple(a.to(model.device) for a in args), tmp, io, axes, opset)
                except Exception as e:
                    raise EngineError(f"exporting the AnyLabeling {part} of {model.zoo_name or 'the model'} failed: "
                                      f"{e}") from e
                check_graph(tmp)
        finally:
            model.train(was_training)
        for produced in sorted(Path(scratch).iterdir()):
            os.replace(produced, out / produced.name)
    config = {
        "type": kind,
        "name": name,
        "provider": "swiftsam",
        "display_name": display_name or f"{model.zoo_name or 'swiftsam model'} (swiftsam, {s} px)",
        "encoder_model_path": files["encoder"],
        "decoder_model_path": files["decoder"],
    }
    if kind == SAM1_TYPE:  # read by the segment_anything loader (it scales images into the canvas itself)
        config.update({"input_size": PROMPT_FRAME, "max_width": CANVAS[1], "max_height": CANVAS[0]})
    with atomic_path(out / f"{name}.yaml") as tmp:
        tmp.write_text(_config_yaml(config))
    return config


__all__ = ["SAM1_TYPE", "SAM2_TYPE", "RawImageEncoder", "Sam2ToolDecoder", "Sam2ToolEncoder", "export_anylabeling",
           "tool_type"]
