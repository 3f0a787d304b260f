"""What several commands share: the prompt parsers, the engine / image / input-size options,
and loading the model a command names (``--input-size`` checked before anything is loaded)."""

from __future__ import annotations

import argparse

import torch

from ..api import DEFAULT_MODEL, load, load_export
from ..engines import engine_names
from ..errors import InputError
from ..export.onnx import read_manifest
from ..modeling.sam import Sam
from ..runtime import resolve_device
from ..zoo import get_entry


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{what} must be {' or '.join(str(c) for c in counts)} comma-separated numbers, got {text!r}")
    return values


def point(text: str) -> list[float]:
    v = _numbers(text, (2, 3), "--point (x,y[,label])")
    if len(v) == 3 and v[2] not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (foreground) or 0 (background), got {text!r}")
    return v if len(v) == 3 else v + [1.0]


def box(text: str) -> list[float]:
    return _numbers(text, (4,), "--box (x0,y0,x1,y1)")


def max_pixels(text: str) -> int | str | None:
    if text == "pil":  # the default: PIL's limit
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--max-pixels must be a number of pixels (0: no limit), got {text!r}")
    return n or None


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the commands that read image files (passed to load_image)."""
    p.add_argument("--max-pixels", type=max_pixels, default="pil", metavar="N",
                   help="refuse image files over N pixels, a guard against decompression bombs (default: PIL's "
                        "limit, 89478485); raise it for large files you trust, 0 for no limit")


def add_input_size_argument(p: argparse.ArgumentParser) -> None:
    """--input-size, for every command that loads a model (checked by input_size_option)."""
    p.add_argument("--input-size", type=int, metavar="PX",
                   help="run the model at this encoder input size: models built for several (swiftsam-r18, "
                        "nanosam-*) take a positive multiple of 32. Default: the size its checkpoint records "
                        "(checkpoints swiftsam wrote), else the model's")


def input_size_option(args: argparse.Namespace, name: str | None) -> dict:
    """--input-size as load()'s keyword, checked against model ``name`` before anything is loaded."""
    size = getattr(args, "input_size", None)
    if size is None:
        return {}
    entry = get_entry(name or DEFAULT_MODEL)
    if not entry.takes_input_size:
        raise InputError(f"{entry.name} has a fixed input size ({entry.spec.input_size} px); drop --input-size.")
    if size < 1:
        raise InputError(f"--input-size must be a positive number of pixels (e.g. {entry.spec.input_size}), got {size}.")
    try:
        with torch.device("meta"):  # the builder's own checks, without allocating the weights
            entry.build(input_size=size)
    except ValueError as e:
        raise InputError(f"--input-size {size} does not fit {entry.name}: {e}; its default is "
                         f"{entry.spec.input_size}.") from None
    return {"input_size": size}


def load_model(args: argparse.Namespace, name: str | None, size: dict | None = None) -> Sam:
    """Zoo model ``name`` (None: the default) with ``--checkpoint`` and ``--input-size`` (``size``:
    input_size_option's result). With ``--onnx-dir`` and no ``--checkpoint``, the export folder's own model:
    no torch weights, its contract (input size, box mask prior, output policy) from the manifest (exports
    made before manifests carried the contract load the zoo model's weights, checked against the graphs).
    The model goes to ``--device`` (auto where the command has none). ``args.model`` is set to the name that
    runs."""
    device = resolve_device(getattr(args, "device", "auto"))  # a clear error before anything is read
    onnx_dir = getattr(args, "onnx_dir", None)
    if onnx_dir and not args.checkpoint and "contract" in read_manifest(onnx_dir):  # older exports: load weights
        model = load_export(onnx_dir)
        if name and get_entry(name).name != model.zoo_name:
            raise InputError(f"{onnx_dir} holds an export of {model.zoo_name}, not {name}: drop --model (or pass "
                             f"--model {model.zoo_name}), or give --checkpoint with the weights it was exported from.")
        if getattr(args, "input_size", None) not in (None, model.spec.input_size):
            raise InputError(f"{onnx_dir} was exported at input size {model.spec.input_size}: drop --input-size, or "
                             f"export the model again at {args.input_size}.")
        args.model = model.zoo_name
        return model
    name = name or DEFAULT_MODEL
    args.model = name
    size = input_size_option(args, name) if size is None else size
    return load(name, checkpoint=args.checkpoint, device=device, **size)


def add_device_argument(p: argparse.ArgumentParser, default: str = "auto", why: str = "") -> None:
    """--device, for every command that runs a model (checked by runtime.resolve_device when the model loads:
    CUDA asked for and absent is a clear error, exit 2)."""
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=f"where the model runs: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N "
                        f"(default {default}{why})")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=engine_names(),
                   help="what runs the model (default auto: the fastest measured for it here)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
                   help="precision: torch (fp16, bf16: encoder and decoder) or openvino (bf16: encoder and decoder; "
                        "int8: the encoder, the decoder in fp32)")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads / openvino inference threads")
    p.add_argument("--onnx-dir", help="graphs written by `swiftsam export` instead of exporting on first use")


def add_ray_arguments(p: argparse.ArgumentParser, verb: str, same: str) -> None:
    """--ray, --ray-address, --ray-concurrency (``label``, ``everything``): ``verb`` says what the actors do, ``same``
    what stays as without Ray. ``check_ray_arguments`` refuses the last two without --ray."""
    r = p.add_argument_group("Ray Data (pip install 'swiftsam[ray]'; README \"On a Ray cluster\")")
    r.add_argument("--ray", action="store_true",
                   help=f"{verb} on Ray actors (each loads the model once; --device cuda: one GPU each); {same}")
    r.add_argument("--ray-address", metavar="ADDRESS",
                   help="--ray: the cluster to join (auto: the one `ray start` made here; HOST:6379; default: start a "
                        "local Ray)")
    r.add_argument("--ray-concurrency", type=int, default=1, metavar="N",
                   help=f"--ray: how many actors {verb} at once (default 1; e.g. the number of GPUs)")


def check_ray_arguments(args: argparse.Namespace) -> None:
    if (args.ray_address or args.ray_concurrency != 1) and not args.ray:
        raise InputError("--ray-address and --ray-concurrency are for --ray: add --ray, or drop them.")


def engine_options(args: argparse.Namespace) -> dict:
    """--dtype / --threads / --onnx-dir, for the engines that take them."""
    options = {}
    if args.dtype != "fp32":
        if args.engine == "openvino":
            if args.dtype == "fp16":
                raise InputError("--dtype fp16 is not an openvino precision on CPU; use fp32, bf16 or int8.")
            options["precision"] = args.dtype
        elif args.dtype == "int8":
            raise InputError("--dtype int8 runs on --engine openvino (after swiftsam quantize MODEL --backend openvino).")
        else:
            if args.engine not in ("torch", "auto"):
                raise InputError(f"--dtype {args.dtype} is a torch engine option (and openvino's); use --engine torch "
                                 f"or openvino.")
            args.engine = "torch"
            options["dtype"] = args.dtype
    if args.threads is not None:
        if args.engine not in ("onnxruntime", "openvino"):
            raise InputError("--threads is an onnxruntime / openvino option; use --engine onnxruntime or openvino.")
        options["threads"] = args.threads
    if args.onnx_dir is not None:
        if args.engine not in ("onnxruntime", "tensorrt", "openvino"):
            raise InputError("--onnx-dir is for --engine onnxruntime, tensorrt or openvino.")
        options["onnx_dir"] = args.onnx_dir
    return options
