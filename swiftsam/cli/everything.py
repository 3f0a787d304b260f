"""``swiftsam everything``: every object in an image or a folder (COCO-RLE JSON + overlay PNG)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api import DEFAULT_MODEL
from ..errors import InputError
from ..predictor import Predictor
from .common import (
    add_device_argument, add_engine_arguments, add_image_arguments, add_input_size_argument, add_ray_arguments,
    check_ray_arguments, engine_options, load_model,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("everything", help="segment everything in an image or a folder (COCO-RLE JSON + overlay PNG)")
    a.add_argument("source", help="an image or a folder of images")
    a.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL}, or the model of --onnx-dir)")
    a.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    a.add_argument("--out", required=True, help="output folder; an interrupted folder run resumes")
    add_input_size_argument(a)
    a.add_argument("--strategy", choices=["grid", "hierarchical", "boxes"], default="grid",
                   help="point grid (SAM), sparse-then-dense grid (TinySAM) or detector boxes (MobileSAMv2)")
    a.add_argument("--points-per-side", type=int,
                   help="grid points per side (default: the model's; SAM's 32 for models without calibrated defaults)")
    a.add_argument("--points-per-batch", type=int, default=64)
    a.add_argument("--pred-iou-thresh", type=float,
                   help="keep masks whose predicted IoU is above this (default: the model's; SAM's 0.88)")
    a.add_argument("--stability-score-thresh", type=float,
                   help="keep masks at least this stable (default: the model's; SAM's 0.95)")
    a.add_argument("--stability-score-offset", type=float,
                   help="logit offset of the stability score (default: the model's; SAM's 1.0)")
    a.add_argument("--box-nms-thresh", type=float, default=0.7)
    a.add_argument("--crop-n-layers", type=int, default=0)
    a.add_argument("--min-mask-region-area", type=int, default=0, help="remove holes/islands smaller than this")
    a.add_argument("--high-score-thresh", type=float,
                   help="hierarchical: logit that marks covered pixels (default: the model's; TinySAM's 8.5)")
    a.add_argument("--boxes", help="--strategy boxes: detector boxes as a COCO results JSON")
    a.add_argument("--annotations", help="COCO JSON whose images[].file_name map files to the detections' image_id")
    a.add_argument("--box-score-thresh", type=float, default=0.0, help="ignore detections scored below this")
    a.add_argument("--overwrite", action="store_true", help="redo images already done in --out")
    a.add_argument("--strict", action="store_true",
                   help="stop at the first image that fails (default: skip it, go on, and report it at the end)")
    a.add_argument("--no-progress", action="store_true", help="no progress bars (they show on a terminal only)")
    add_ray_arguments(a, "segment", "the same outputs, resume and report")
    add_engine_arguments(a)
    add_device_argument(a)
    add_image_arguments(a)
    a.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from ..everything.runner import list_images, load_box_prompts, run_everything

    check_ray_arguments(args)
    images = list_images(args.source)
    boxes = None
    if args.strategy == "boxes":
        if not args.boxes:
            raise InputError("--strategy boxes needs --boxes DETECTIONS.json (COCO results: image_id, bbox, score).")
        boxes = load_box_prompts(args.boxes, images, args.annotations, args.box_score_thresh)
    elif args.boxes:
        raise InputError("--boxes is for --strategy boxes.")
    progress = False if args.no_progress else None  # None: bars on a terminal only
    if args.ray:
        summary = _ray_everything(args, images, boxes)
        return _everything_report(summary, args.out)
    generator, settings = build_generator(args, progress=progress if len(images) == 1 else False)
    summary = run_everything(generator, args.source, args.out, settings, boxes=boxes, overwrite=args.overwrite,
                             max_pixels=args.max_pixels, progress=progress, strict=args.strict,
                             on_image=lambda im, n: print(f"{im.name}: {n} masks") if len(images) == 1 else None)
    return _everything_report(summary, args.out)


def build_generator(args: argparse.Namespace, progress: bool | None = False):
    """The one home of the command's predictor and MaskGenerator (the plain run's and each Ray actor's), with the
    settings recorded in --out (the values in effect: the model's calibrated defaults resolved)."""
    from ..everything import SAM_DEFAULTS, MaskGenerator

    predictor = Predictor(load_model(args, args.model),
                          engine=args.engine, **engine_options(args))
    params = dict(  # None: the model's calibrated default (MaskGenerator resolves it)
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area, strategy=args.strategy,
        high_score_thresh=args.high_score_thresh,
    )
    generator = MaskGenerator(predictor, output_mode="coco_rle", progress=progress, **params)
    params.update({k: getattr(generator, k) for k in SAM_DEFAULTS})  # the values in effect, recorded with the results
    settings = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                "engine": predictor.engine.describe(), "boxes": str(args.boxes) if args.boxes else None, **params}
    return generator, settings


def _ray_everything(args: argparse.Namespace, images: list[Path], boxes: dict | None) -> dict:
    """--ray: run_everything per image on Ray Data actors (apps.ray_batch), on the cluster --ray-address names."""
    import copy

    from ..apps.ray_batch import check_concurrency, ray_everything
    from ..serve.ray_serve import connect

    check_concurrency(args.ray_concurrency)
    device = (args.device or "auto").strip().lower()
    gpus = 1.0 if device.startswith("cuda") else 0.0
    remote = copy.copy(args)
    remote.device = "cuda" if gpus else args.device  # Ray gives each actor its GPU as its cuda:0

    def make_generator():
        return build_generator(remote)

    n = args.ray_concurrency
    connect(args.ray_address, need={"GPU": n * gpus} if gpus else {"CPU": n}, what=f"{n} actor(s)")
    return ray_everything(make_generator, images, args.out, boxes=boxes, overwrite=args.overwrite, strict=args.strict,
                          max_pixels=args.max_pixels, concurrency=n, num_gpus=gpus)


def _everything_report(summary: dict, out: str) -> int:
    """Print what an everything run did; exit 2 when no image has a result, else 0 (problems are reported)."""
    from ..everything.runner import SUMMARY_NAME

    def listing(items: list[dict], key: str) -> str:
        shown = "".join(f"\n  {it['image']}: {it[key]}" for it in items[:10])
        return shown + (f"\n  ... and {len(items) - 10} more" if len(items) > 10 else "")

    err = sys.stderr
    report = Path(out) / SUMMARY_NAME
    print(f"{summary['done']} image(s) segmented, {summary['skipped']} already done; results in {out}")
    if summary["busy"]:
        print(f"swiftsam: {len(summary['busy'])} image(s) left to another run working in {out}:"
              f"{listing(summary['busy'], 'by')}", file=err)
    if summary["redone"]:
        print(f"swiftsam: {len(summary['redone'])} invalid result(s) done again:{listing(summary['redone'], 'reason')}",
              file=err)
    if summary["boxes_clipped"] or summary["boxes_dropped"]:
        print(f"swiftsam: warning: {summary['boxes_clipped']} detector box(es) clipped to their image (at most 1 px "
              f"outside), {len(summary['boxes_dropped'])} dropped:{listing(summary['boxes_dropped'], 'reason')}",
              file=err)
    if summary["empty"]:
        print(f"swiftsam: warning: {len(summary['empty'])} image(s) with no mask kept:"
              f"{listing(summary['empty'], 'reason')}", file=err)
    if summary["failed"]:
        failed = len(summary["failed"])
        if summary["done"] == 0 and summary["skipped"] == 0 and not summary["busy"]:
            print(f"swiftsam: error: no image could be segmented ({failed} failed; listed in {report}):"
                  f"{listing(summary['failed'], 'error')}", file=err)
            return 2
        print(f"swiftsam: warning: {failed} image(s) failed and were skipped (listed in {report}; --strict stops "
              f"at the first):{listing(summary['failed'], 'error')}", file=err)
    return 0
