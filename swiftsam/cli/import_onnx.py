"""``swiftsam import-onnx``: an image encoder published only as an ONNX graph (NanoSAM's
``resnet18_image_encoder.onnx``) into a swiftsam checkpoint of a zoo model."""

from __future__ import annotations

import argparse
import json

from ..api import build
from ..errors import InputError
from ..utils import check_output_file, writing
from ..zoo import get_entry, save_checkpoint
from ..zoo.onnx_import import DEFAULT_DECODER, graph_input_size, import_onnx


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-onnx", help="read an image encoder's ONNX graph (e.g. NanoSAM's) into a checkpoint",
                       description="Read the weights of an image-encoder ONNX graph (e.g. NanoSAM's "
                                   "resnet18_image_encoder.onnx) into zoo model MODEL, strictly, check it against "
                                   "onnxruntime on the graph, and save a checkpoint that swiftsam.load(MODEL, "
                                   "checkpoint=OUT) and every engine run.")
    p.add_argument("model", help="the zoo model the graph is an export of (e.g. nanosam-r18)")
    p.add_argument("graph", help="the ONNX file (image -> image embeddings)")
    p.add_argument("--out", required=True, help="the checkpoint to write (.pt)")
    p.add_argument("--decoder-from", default=DEFAULT_DECODER, metavar="MODEL|CHECKPOINT",
                   help="where the prompt encoder and mask decoder come from: a zoo model's weights (downloaded "
                        "if needed) or a checkpoint file (default: mobilesam, the decoder NanoSAM runs with)")
    p.add_argument("--input-size", type=int, metavar="PX",
                   help="the graph's input size, for graphs whose input size is dynamic (read from the graph "
                        "otherwise)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the comparison with onnxruntime on the graph (needs no onnxruntime)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    entry = get_entry(args.model)
    check_output_file(args.out, "--out")  # before any work
    size = graph_input_size(args.graph)
    if size is None and args.input_size is None:
        raise InputError(f"{args.graph} takes images of any size: pass the size it was trained at with --input-size "
                         f"(e.g. {entry.spec.input_size}).")
    if size is not None and args.input_size not in (None, size):
        raise InputError(f"{args.graph} takes {size} x {size} images, not {args.input_size}: drop --input-size.")
    size = size or args.input_size
    if entry.takes_input_size:
        model = build(entry.name, input_size=size)
    elif size != entry.spec.input_size:
        raise InputError(f"{args.graph} takes {size} x {size} images, but {entry.name} has a fixed input size "
                         f"({entry.spec.input_size}): it is not an export of {entry.name}.")
    else:
        model = build(entry.name)
    report = import_onnx(model, args.graph, decoder_from=args.decoder_from, check=not args.no_check)
    with writing(args.out, "--out"):
        save_checkpoint(model, args.out)
    report["out"] = str(args.out)
    print(json.dumps(report, indent=2))
    print(f"load it with swiftsam.load({entry.name!r}, checkpoint={str(args.out)!r}) "
          f"or --model {entry.name} --checkpoint {args.out}")
    return 0
