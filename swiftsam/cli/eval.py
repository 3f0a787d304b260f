"""``swiftsam eval coco``: accuracy protocols over COCO-format annotations; ``eval lvis``: LVIS mask AP;
``swiftsam eval davis``: DAVIS video."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import DEFAULT_MODEL
from ..errors import InputError
from ..predictor import Predictor
from .common import (
    add_device_argument, add_engine_arguments, add_image_arguments, add_input_size_argument, engine_options,
    input_size_option, load_model,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="accuracy protocols").add_subparsers(dest="dataset", required=True)
    c = ev.add_parser("coco", help="COCO-format instance annotations: box, point or detections protocol")
    c.add_argument("--images", required=True, help="image folder (e.g. val2017)")
    c.add_argument("--annotations", required=True, help="instances JSON")
    c.add_argument("--model", help=f"zoo model (default {DEFAULT_MODEL})")
    c.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    add_input_size_argument(c)
    c.add_argument("--baseline", choices=["box-fill", "grabcut", "oracle"], help="a baseline instead of a model")
    c.add_argument("--protocol", choices=["box", "point", "detections"], default="box")
    c.add_argument("--variant", choices=["nanosam", "efficientvit", "sam"],
                   help="box protocol: nanosam (default) = best of all 4 outputs, every annotation; efficientvit = "
                        "best of the 3 multimask outputs, annotations with area >= 1. point protocol: sam (default) = "
                        "clicks after the first also get the previous low-res logits as mask input, single-mask "
                        "output; efficientvit = every click without mask input, best of the 3 multimask outputs")
    c.add_argument("--clicks", type=int, default=1, help="point protocol: clicks per object (mIoU after each)")
    c.add_argument("--detections", help="detections protocol: COCO results JSON of a detector")
    c.add_argument("--limit", type=int, help="only the first N images (by id)")
    c.add_argument("--out", help="results folder (default out/eval/MODEL-PROTOCOL); an interrupted run resumes")
    c.add_argument("--overwrite", action="store_true", help="discard earlier results in --out")
    add_engine_arguments(c)
    add_device_argument(c)
    add_image_arguments(c)
    c.set_defaults(fn=run)

    lv = ev.add_parser("lvis", help="LVIS-format annotations: mask AP with LVIS's federated rules (APr/APc/APf)")
    lv.add_argument("--images", required=True, help="image folder (for LVIS v1 val: COCO's val2017 + train2017 "
                                                    "images in one folder; files found by file_name or coco_url)")
    lv.add_argument("--annotations", required=True, help="LVIS annotation JSON (e.g. lvis_v1_val.json)")
    lv.add_argument("--model", help=f"zoo model (default {DEFAULT_MODEL})")
    lv.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    add_input_size_argument(lv)
    lv.add_argument("--baseline", choices=["box-fill", "grabcut", "oracle"], help="a baseline instead of a model")
    lv.add_argument("--protocol", choices=["box", "detections"], default="box",
                    help="box: every ground-truth box, each mask scored with its predicted IoU; detections: the "
                         "boxes of --detections, scored with the detection score")
    lv.add_argument("--detections", help="detections protocol: LVIS/COCO results JSON of a detector")
    lv.add_argument("--limit", type=int, help="only the first N images (by id)")
    lv.add_argument("--out", help="results folder (default out/eval/MODEL-lvis-PROTOCOL); an interrupted run resumes")
    lv.add_argument("--overwrite", action="store_true", help="discard earlier results in --out")
    add_engine_arguments(lv)
    add_device_argument(lv)
    add_image_arguments(lv)
    lv.set_defaults(fn=run_lvis)

    d = ev.add_parser("davis", help="DAVIS semi-supervised video protocol: J, F and J&F per sequence")
    d.add_argument("--davis", required=True, metavar="ROOT", help="DAVIS root (JPEGImages/<seq>/, Annotations/<seq>/)")
    d.add_argument("--sequences", help="comma-separated sequence names (default: every sequence of ROOT)")
    d.add_argument("--max-frames", type=int, metavar="N", help="only the first N frames of each sequence (N >= 3)")
    d.add_argument("--model", help=f"zoo model (default {DEFAULT_MODEL}); SAM 2 models track with memory, the "
                                   "others with the image-only tracker of `swiftsam track`")
    d.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    add_input_size_argument(d)
    d.add_argument("--out", required=True, help="results folder: <sequence>/NNNNN.png masks, <sequence>/scores.json, "
                                                "summary.json; an interrupted run resumes")
    d.add_argument("--overwrite", action="store_true", help="track again the sequences already done in --out")
    add_engine_arguments(d)
    add_device_argument(d)
    d.set_defaults(fn=run_davis)


def run(args: argparse.Namespace) -> int:
    from ..eval import CocoImages, evaluate_coco, format_summary
    from ..eval.coco import load_detections

    dataset = CocoImages(args.images, args.annotations)
    detections = load_detections(args.detections, dataset) if args.detections else None
    segmenter, name, settings = build_segmenter(args, dataset)
    out = args.out or f"out/eval/{name}-{args.protocol}"
    summary = evaluate_coco(
        dataset, segmenter, out, args.protocol, variant=args.variant, clicks=args.clicks, detections=detections,
        limit=args.limit, model_name=name, settings=settings, overwrite=args.overwrite, max_pixels=args.max_pixels,
    )
    if summary is not None:  # rank 0
        print(format_summary(summary))
        print(f"wrote {Path(out) / 'summary.json'}")
    return 0


def build_segmenter(args: argparse.Namespace, dataset) -> tuple[object, str, dict]:
    """(segmenter, its name, its settings for the run's config): a baseline or the model of --model."""
    from ..eval import BASELINES, OracleSegmenter, PredictorSegmenter

    if args.baseline and (args.checkpoint or args.model):
        raise InputError("--baseline replaces the model: drop --model / --checkpoint.")
    if args.baseline == "oracle":
        return OracleSegmenter(dataset), "oracle", {}
    if args.baseline:
        return BASELINES[args.baseline](), args.baseline, {}
    name = args.model or DEFAULT_MODEL
    size = input_size_option(args, name)
    model = load_model(args, name, size)
    predictor = Predictor(model, engine=args.engine, **engine_options(args))
    settings = {"checkpoint": str(args.checkpoint) if args.checkpoint else None, "engine": predictor.engine.describe(),
                **size}
    return PredictorSegmenter(predictor), name, settings


def run_lvis(args: argparse.Namespace) -> int:
    from ..eval.coco import load_detections
    from ..eval.lvis import LvisImages, evaluate_lvis, format_lvis_summary

    if args.protocol == "detections" and not args.detections:
        raise InputError("--protocol detections needs --detections FILE (LVIS/COCO results JSON of a detector).")
    if args.protocol == "box" and args.detections:
        raise InputError("--detections is for --protocol detections; the box protocol prompts with the "
                         "ground-truth boxes.")
    dataset = LvisImages(args.images, args.annotations)
    detections = load_detections(args.detections, dataset) if args.detections else None
    segmenter, name, settings = build_segmenter(args, dataset)
    out = args.out or f"out/eval/{name}-lvis-{args.protocol}"
    summary = evaluate_lvis(dataset, segmenter, out, args.protocol, detections=detections, settings=settings,
                            limit=args.limit, model_name=name, overwrite=args.overwrite, max_pixels=args.max_pixels)
    if summary is not None:  # rank 0
        print(format_lvis_summary(summary))
        print(f"wrote {Path(out) / 'summary.json'}")
    return 0


def run_davis(args: argparse.Namespace) -> int:
    from ..apps.davis import check_sequences, run_davis as run_protocol
    from ..utils import check_output_dir

    out = check_output_dir(args.out, "--out")
    if args.max_frames is not None and args.max_frames < 3:
        raise InputError(f"--max-frames must be 3 or more (the first and last frames are not scored), got "
                         f"{args.max_frames}.")
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    if args.sequences is not None and not sequences:
        raise InputError(f"--sequences names no sequence: {args.sequences!r}; give names like blackswan,dog.")
    check_sequences(args.davis, sequences)  # before the model loads
    options = engine_options(args)
    name = args.model or DEFAULT_MODEL
    model = load_model(args, name, input_size_option(args, name))
    settings = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                "input_size": model.spec.input_size}
    summary = run_protocol(model, args.davis, out, sequences=sequences, max_frames=args.max_frames,
                           engine=args.engine, engine_options=options, settings=settings, overwrite=args.overwrite,
                           log=print)
    print(summary["table"])
    print(f"J {summary['j']:.3f}  F {summary['f']:.3f}  J&F {summary['jf']:.3f}; wrote {Path(out) / 'summary.json'}")
    return 0
