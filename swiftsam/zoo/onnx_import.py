"""Weights published only as an ONNX graph (NanoSAM's ``resnet18_image_encoder.onnx``) read into a zoo model.

The graph's tensors carry no usable names (an eval-mode export folds each batch norm into the convolution
before it and names the result ``onnx::Conv_123``), so they are matched by structure: the graph's
convolutions, in graph order, against the model's convolutions in the order its forward pass runs them, each
pair checked for weight shape, stride, padding, dilation and groups; batch norms kept in the graph map to the
model's; additive tensors (the learned position term) map by shape. Every tensor of the graph must find its
place (only scalar-sized constants of parameterless ops, e.g. GELU's, are left over) and every weight of the
model must be filled, or the import stops with an error that says what did not fit.

A folded graph has no batch norms left: each convolution's folded weight goes into our convolution and its
folded bias into an identity batch norm after it (running mean 0, variance 1, scale sqrt(1 + eps), shift the
bias), so the model keeps its own layout (its checkpoints load strictly, every engine runs it) and computes
what the graph computes.

The image encoder is all such a graph holds: the prompt encoder and mask decoder come from another model's
weights (NanoSAM distils only the encoder and keeps MobileSAM's decoder, so that is the default).
"""

from __future__ import annotations

import copy
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError, ModelNotFoundError
from ..modeling.sam import Sam
from ..optional import require
from .checkpoint import load_checkpoint, read_checkpoint
from .registry import get_entry

DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
DEFAULT_DECODER = "mobilesam"  # NanoSAM's decoder: MobileSAM's, unchanged
_SMALL = 8  # constants with at most this many values are settings of parameterless ops (GELU, Resize), not weights
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


@dataclass
class _GraphConv:
    node: object  # onnx NodeProto
    weight: str
    bias: str | None
    bn: object | None = None  # the BatchNormalization node its output feeds, if any


@dataclass
class _Graph:
    path: Path
    model: object  # onnx ModelProto
    values: dict[str, np.ndarray]  # constant tensors: initialisers and Constant nodes (Identity copies resolved)
    origin: dict[str, str]  # tensor name -> the initialiser / Constant output it is a copy of
    convs: list[_GraphConv] = field(default_factory=list)
    additive: list[str] = field(default_factory=list)  # constants added to activations (position terms)
    used: set[str] = field(default_factory=set)


def _onnx():
    return require("onnx", "reading an ONNX graph's weights (swiftsam import-onnx)")


def _read_graph(path: str | os.PathLike[str]) -> _Graph:
    onnx = _onnx()
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError, missing external data ...
        raise CheckpointError(f"{path} cannot be read as an ONNX model ({type(e).__name__}: {e}).") from None
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    origin = {name: name for name in values}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            value = (numpy_helper.to_array(attr.t) if attr.name == "value"
                     else np.asarray(onnx.helper.get_attribute_value(attr)))
            values[node.output[0]] = value
            origin[node.output[0]] = node.output[0]
        elif node.op_type == "Identity" and node.input[0] in values:  # a deduplicated initialiser
            values[node.output[0]] = values[node.input[0]]
            origin[node.output[0]] = origin[node.input[0]]
    g = _Graph(path, model, values, origin)

    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    attached = set()
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            inputs = list(node.input) + ["", ""]
            if inputs[1] not in values:
                raise CheckpointError(f"{path}: the weights of {node.op_type} node {node.name!r} are computed while "
                                      f"the graph runs, not stored in it: there is nothing to import.")
            users = consumers[node.output[0]]
            bn = users[0] if len(users) == 1 and users[0].op_type == "BatchNormalization" else None
            if bn is not None and all(name in values for name in bn.input[1:5]):
                attached.add(bn.output[0])
            else:
                bn = None
            g.convs.append(_GraphConv(node, inputs[1], inputs[2] or None, bn))
        elif node.op_type == "BatchNormalization" and node.output[0] not in attached:
            raise CheckpointError(f"{path}: batch norm {node.name!r} does not follow a convolution; this graph does "
                                  f"not have the layout of the model it is imported into.")
        elif node.op_type in ("Add", "Sum"):
            g.additive += [name for name in node.input if name in values and values[name].size > _SMALL]
    return g


def graph_input_size(path: str | os.PathLike[str]) -> int | None:
    """The square input size of an image-encoder graph (its input 1 x 3 x S x S), None where it is dynamic."""
    graph = _read_graph_header(path)
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1:
        raise CheckpointError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image "
                              f"encoder has one, the image.")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise CheckpointError(f"{path}: its input {inputs[0].name!r} has shape {dims}; an image encoder takes "
                              f"N x 3 x S x S.")
    if dims[2] is None or dims[3] is None:
        return None
    if dims[2] != dims[3]:
        raise CheckpointError(f"{path}: its input is {dims[2]} x {dims[3]}; SAM encoders take square inputs.")
    return dims[2]


def _read_graph_header(path: str | os.PathLike[str]):
    onnx = _onnx()
    if not Path(path).is_file():
        raise InputError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False).graph
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as an ONNX model ({type(e).__name__}: {e}).") from None


def _forward_convs(encoder: nn.Module, input_size: int) -> list[tuple[str, nn.Module, str | None]]:
    """The encoder's convolutions in the order its forward pass runs them, each with the batch norm that
    takes its output directly (or None). Traced on a copy on PyTorch's meta device (shapes only, no arithmetic,
    no copy of the weights)."""
    memo: dict[int, object] = {}
    for t in (*encoder.parameters(), *encoder.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    shadow = copy.deepcopy(encoder, memo).eval()
    names = {m: n for n, m in shadow.named_modules()}
    calls: list[tuple[nn.Module, object, object]] = []
    for m in shadow.modules():
        if isinstance(m, (*_CONVS, nn.BatchNorm2d)):
            m.register_forward_hook(lambda m, args, out: calls.append((m, args[0], out)))
    with torch.no_grad():
        shadow(torch.zeros(1, 3, input_size, input_size, device="meta"))
    convs = []
    for i, (m, _, out) in enumerate(calls):
        if isinstance(m, _CONVS):
            nxt = calls[i + 1] if i + 1 < len(calls) else None
            bn = names[nxt[0]] if nxt and isinstance(nxt[0], nn.BatchNorm2d) and nxt[1] is out else None
            convs.append((names[m], m, bn))
    return convs


def _attrs(node) -> dict:
    onnx = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _check_conv_settings(g: _Graph, gc: _GraphConv, name: str, conv: nn.Module) -> None:
    a = _attrs(gc.node)
    k = len(conv.kernel_size)
    want = {"strides": list(conv.stride), "dilations": list(conv.dilation), "group": conv.groups,
            "pads": list(conv.padding) * 2}
    got = {"strides": list(a.get("strides", [1] * k)), "dilations": list(a.get("dilations", [1] * k)),
           "group": a.get("group", 1), "pads": list(a.get("pads", [0] * 2 * k))}
    if isinstance(conv, nn.ConvTranspose2d):
        want["output_padding"] = list(conv.output_padding)
        got["output_padding"] = list(a.get("output_padding", [0] * k))
    auto_pad = a.get("auto_pad", b"NOTSET")
    if got != want or auto_pad not in (b"NOTSET", "NOTSET"):
        diff = ", ".join(f"{key} {got[key]} (ours {want[key]})" for key in want if got[key] != want[key])
        raise CheckpointError(f"{g.path}: {gc.node.op_type} node {gc.node.name!r} does not match {name}: "
                              f"{diff or f'auto_pad {auto_pad}'}.")


def _take(g: _Graph, name: str) -> np.ndarray:
    g.used.add(g.origin[name])
    return g.values[name].astype(np.float64)


def encoder_state_from_onnx(encoder: nn.Module, path: str | os.PathLike[str], input_size: int,
                            prefix: str = "image_encoder.") -> dict[str, torch.Tensor]:
    """The state dict of ``encoder`` (keys with ``prefix``) read from the ONNX graph at ``path``, strictly:
    every convolution, batch norm and additive tensor of the graph mapped, shapes and settings checked,
    every weight of the encoder filled. Raises CheckpointError naming what does not fit."""
    g = _read_graph(path)
    ours = _forward_convs(encoder, input_size)
    if len(ours) != len(g.convs):
        raise CheckpointError(f"{path} has {len(g.convs)} convolutions, the encoder it is imported into has "
                              f"{len(ours)}: it is not an export of this model (another depth or family?).")
    modules = dict(encoder.named_modules())
    state: dict[str, torch.Tensor] = {}
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)  # noqa: E731
    for (name, conv, bn_name), gc in zip(ours, g.convs):
        weight = _take(g, gc.weight)
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise CheckpointError(f"{path}: {gc.node.op_type} node {gc.node.name!r} has weights of shape "
                                  f"{tuple(weight.shape)} where {name}.weight has {tuple(conv.weight.shape)}: it "
                                  f"is not an export of this model.")
        _check_conv_settings(g, gc, name, conv)
        out_axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
        bias = _take(g, gc.bias) if gc.bias else np.zeros(weight.shape[out_axis])
        bn = modules[bn_name] if bn_name else None
        if gc.bn is not None:
            scale, shift, mean, var = (_take(g, n) for n in gc.bn.input[1:5])
            eps = float(_attrs(gc.bn).get("epsilon", 1e-5))
            if bn is not None and gc.bias is None and conv.bias is None:  # the same layout: copied as it is
                state.update({f"{name}.weight": f32(weight), f"{bn_name}.weight": f32(scale),
                              f"{bn_name}.bias": f32(shift), f"{bn_name}.running_mean": f32(mean),
                              f"{bn_name}.running_var": f32(var)})
                continue
            s = scale / np.sqrt(var + eps)
            weight = weight * s.reshape([-1 if i == out_axis else 1 for i in range(weight.ndim)])
            bias = (bias - mean) * s + shift
        state[f"{name}.weight"] = f32(weight)
        if bn is not None:  # a folded graph: the bias goes into an identity batch norm
            if conv.bias is not None:
                state[f"{name}.bias"], bias = f32(bias), np.zeros_like(bias)
            state.update({f"{bn_name}.weight": f32(np.full_like(bias, math.sqrt(1.0 + bn.eps))),
                          f"{bn_name}.bias": f32(bias), f"{bn_name}.running_mean": f32(np.zeros_like(bias)),
                          f"{bn_name}.running_var": f32(np.ones_like(bias))})
        elif conv.bias is not None:
            state[f"{name}.bias"] = f32(bias)
        elif np.any(bias != 0):
            raise CheckpointError(f"{path}: {gc.node.op_type} node {gc.node.name!r} adds a bias that {name} has no "
                                  f"place for: it is not an export of this model.")
    for key, value in encoder.state_dict().items():
        if key.endswith("num_batches_tracked"):  # a training counter: not in graphs, unused in eval
            state[key] = torch.zeros_like(value)
    rest = {k: v for k, v in encoder.named_parameters() if k not in state}
    for key, param in rest.items():  # additive terms (the learned position embedding), matched by shape
        fits = [n for n in g.additive if tuple(g.values[n].shape) == tuple(param.shape) and g.origin[n] not in g.used]
        if len(fits) != 1:
            raise CheckpointError(f"{path}: {'no' if not fits else 'more than one'} tensor of shape "
                                  f"{tuple(param.shape)} is added in the graph where the model adds {key}; it is "
                                  f"not an export of this model.")
        state[key] = f32(_take(g, fits[0]))
    missing = sorted(set(encoder.state_dict()) - set(state))
    if missing:
        raise CheckpointError(f"{path}: the graph has no tensor for {', '.join(missing[:8])}"
                              f"{' ...' if len(missing) > 8 else ''}; the encoder is not one swiftsam can import.")
    left = sorted({g.origin[n] for n in g.values if g.values[n].size > _SMALL} - g.used)
    if left:
        shapes = ", ".join(f"{n} {tuple(g.values[n].shape)}" for n in left[:8])
        raise CheckpointError(f"{path}: {len(left)} tensor(s) of the graph have no place in the model ({shapes}"
                              f"{' ...' if len(left) > 8 else ''}): it is not an export of this model.")
    return {prefix + k: v for k, v in state.items()}


def decoder_state(source: str | os.PathLike[str], *, progress: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The prompt encoder and mask decoder weights of ``source``: a checkpoint file, or a zoo model's
    official or bundled weights (downloaded and verified like ``swiftsam download``). Returns (state, what)."""
    path = Path(source)
    if path.is_file():
        state, _ = read_checkpoint(path)
        what = str(path)
    else:
        if path.suffix or os.sep in str(source):
            raise InputError(f"decoder checkpoint not found: {source} (give a checkpoint file or a zoo model name, "
                             f"e.g. {DEFAULT_DECODER}).")
        try:
            entry = get_entry(str(source))
        except ModelNotFoundError:
            raise InputError(f"the decoder source {source!r} is neither a checkpoint file nor a zoo model (e.g. "
                             f"{DEFAULT_DECODER}, NanoSAM's decoder; see `swiftsam models`).") from None
        if entry.loader is not None:
            raise InputError(f"{entry.name}'s checkpoint has a format of its own; take the decoder from "
                             f"{DEFAULT_DECODER} or a checkpoint file.")
        if entry.bundled is not None:
            from .bundled import read_bundled

            state = read_bundled(entry.bundled)
        else:
            from .hub import download

            state, _ = read_checkpoint(download(entry, progress=progress))
        what = f"{entry.name}'s weights"
    state = {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
    if not state:
        raise CheckpointError(f"{what} hold no prompt encoder / mask decoder weights ({', '.join(DECODER_PREFIXES)}"
                              f"...): give a SAM-family checkpoint for the decoder.")
    return state, what


def check_against_onnxruntime(encoder: nn.Module, path: str | os.PathLike[str], input_size: int,
                              seed: int = 0) -> float:
    """Run ``encoder`` and the graph (onnxruntime, CPU) on one random image; return the largest difference
    relative to the output's scale (max |ours - graph| / max(1, max |graph|))."""
    ort = require("onnxruntime", "checking imported weights against their ONNX graph")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    (expected,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:1]
    param = next(encoder.parameters())
    with torch.no_grad():
        got = encoder(x.to(param.device, param.dtype)).float().cpu().numpy()
    if got.shape != expected.shape:
        raise CheckpointError(f"{path} outputs {expected.shape}, the model {got.shape}: it is not an export of it.")
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def import_onnx(model: Sam, path: str | os.PathLike[str], *, decoder_from: str | os.PathLike[str] = DEFAULT_DECODER,
                check: bool = True, tolerance: float = 1e-4, progress: bool = True) -> dict:
    """Fill ``model`` (a zoo model built at the graph's input size, see :func:`graph_input_size`) with the
    image encoder of the ONNX graph at ``path`` and the decoder of ``decoder_from``, strictly; with ``check``,
    compare its encoder with onnxruntime on the graph (relative difference at most ``tolerance``).
    Returns a report: tensors imported, decoder source, the difference."""
    encoder_state = encoder_state_from_onnx(model.image_encoder, path, int(model.spec.input_size))
    decoder, what = decoder_state(decoder_from, progress=progress)
    entry = get_entry(model.zoo_name)
    load_checkpoint(model, entry, {**encoder_state, **decoder},
                    f"{path} (image encoder) + {what} (prompt encoder, mask decoder)")
    model.weights_source = f"{path} + {what}"
    report = {"model": entry.name, "onnx": str(path), "input_size": int(model.spec.input_size),
              "encoder_tensors": len(encoder_state), "decoder_from": what}
    if check:
        diff = check_against_onnxruntime(model.image_encoder.eval(), path, int(model.spec.input_size))
        report["max_relative_difference"] = diff
        if not diff <= tolerance:
            raise CheckpointError(f"the imported {entry.name} encoder differs from onnxruntime on {path} by {diff:.2e} "
                                  f"(relative; allowed {tolerance:.0e}): the graph computes something else than this "
                                  f"model (another input size or preprocessing inside the graph?).")
    return report
