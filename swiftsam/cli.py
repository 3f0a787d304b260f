"""Command line: ``swiftsam models | download | segment | everything | export | eval | bench``."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .api import DEFAULT_MODEL, load
from .engines import engine_names
from .errors import InputError, SwiftSamError
from .export.onnx import OPSET, export_onnx
from .image_io import load_image
from .predictor import Predictor
from .utils import atomic_path, check_output_dir, check_output_file, write_error, writing
from .visualize import MAX_LABELS, hidden_objects, label_image, overlay
from .zoo import get_entry, list_models
from .zoo.bundled import WEIGHTS_DIR
from .zoo.hub import cached_path, download


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{what} must be {' or '.join(str(c) for c in counts)} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    v = _numbers(text, (2, 3), "--point (x,y[,label])")
    if len(v) == 3 and v[2] not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (foreground) or 0 (background), got {text!r}")
    return v if len(v) == 3 else v + [1.0]


def _box(text: str) -> list[float]:
    return _numbers(text, (4,), "--box (x0,y0,x1,y1)")


def cmd_models(args: argparse.Namespace) -> int:
    rows = [("name", "family", "input", "MB", "cached", "description")]
    for name in list_models():
        e = get_entry(name)
        cached = "-" if e.weights is None else ("yes" if cached_path(e.weights).exists() else "no")
        mb = "-" if e.weights is None or e.weights.size_mb is None else f"{e.weights.size_mb:.0f}"
        if e.bundled is not None:
            cached = "bundled"
            mb = f"{sum((WEIGHTS_DIR / f).stat().st_size for f in e.bundled.files if (WEIGHTS_DIR / f).exists()) / 2**20:.0f}"
        default = " (default)" if name == DEFAULT_MODEL else ""
        rows.append((name + default, e.family, str(e.spec.input_size), mb, cached, e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    path = download(get_entry(args.name), force=args.force)
    print(path)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    points = args.point or []
    boxes = args.box or []
    if not points and not boxes:
        raise InputError("give at least one --point x,y[,label] or --box x0,y0,x1,y1.")
    if len(boxes) > 1 and points:
        raise InputError("with several --box prompts each box is one object; --point can only go with a single box.")
    if not args.out and not args.out_dir:
        raise InputError("give --out FILE.png (one label PNG for all objects) and/or --out-dir DIR (one PNG per object).")
    n = max(1, len(boxes))
    if args.out and n > MAX_LABELS:
        raise InputError(f"{n} objects do not fit one label PNG (at most {MAX_LABELS}): use --out-dir DIR instead of --out.")
    # every output is checked before the model runs: a bad path fails at once, not after the work
    for path, what in ((args.out, "--out"), (args.overlay, "--overlay")):
        if path:
            check_output_file(path, what)
    if args.out and args.overlay and Path(args.out).resolve() == Path(args.overlay).resolve():
        raise InputError("--out and --overlay name the same file: give each its own name.")
    if args.out_dir:
        check_output_dir(args.out_dir)
    image = load_image(args.image, max_pixels=args.max_pixels)
    model = load(args.model, checkpoint=args.checkpoint, **input_size_option(args, args.model))
    predictor = Predictor(model, engine=args.engine, **engine_options(args))
    predictor.set_image(image)
    coords = np.array([p[:2] for p in points]) if points else None
    labels = np.array([p[2] for p in points]) if points else None
    masks, scores, _ = predictor.predict_batch(
        point_coords=None if coords is None else coords[None],
        point_labels=None if labels is None else labels[None],
        boxes=np.array(boxes) if boxes else None,
        multimask_output=args.multimask,
    )
    best = scores.argmax(axis=1)  # with --multimask keep the mask the model rates best
    chosen = masks[np.arange(n), best]
    label_png = label_image(chosen) if args.out else None
    files = _write_segment_outputs(args, image, chosen, label_png, points, boxes)
    if label_png is not None:
        if label_png.dtype != np.uint8:
            print(f"swiftsam: note: {n} objects do not fit 8 bits: {args.out} is a 16-bit label PNG.", file=sys.stderr)
        lost, hidden = hidden_objects(chosen, label_png)
        if lost:
            whole = ("the PNGs in --out-dir hold them whole" if args.out_dir
                     else "use --out-dir DIR for one PNG per object")
            print(f"swiftsam: warning: {lost} of {n} objects lost pixels to later overlapping objects in {args.out}"
                  f"{f' ({hidden} entirely hidden)' if hidden else ''}: a pixel holds the last object covering it; "
                  f"{whole}.", file=sys.stderr)
    if args.json:
        objects = []
        for k in range(n):
            ys, xs = np.nonzero(chosen[k])
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if xs.size else None
            objects.append({
                "id": k + 1, "score": float(scores[k, best[k]]), "area": int(chosen[k].sum()), "bbox_xywh": bbox,
                "box": boxes[k] if boxes else None, "points": points,
                **({"file": str(files[k])} if files else {}),
            })
        print(json.dumps({"image": str(args.image), "model": args.model, "masks": str(args.out) if args.out else None,
                          "mask_dir": str(args.out_dir) if args.out_dir else None, "objects": objects}, indent=2))
    else:
        for k in range(n):
            print(f"object {k + 1}: score {scores[k, best[k]]:.3f}, area {int(chosen[k].sum())} px")
        wrote = [str(p) for p in (args.out, args.overlay) if p] + ([f"{len(files)} PNG(s) in {args.out_dir}"] if files else [])
        print("wrote " + ", ".join(wrote))
    return 0


def _write_segment_outputs(args: argparse.Namespace, image: np.ndarray, chosen: np.ndarray, label_png: np.ndarray | None,
                           points: list, boxes: list) -> list[Path]:
    """Write the label PNG, the overlay and the per-object PNGs as one: each is written to a temporary first
    and they replace their targets only once all are written, so a failure (full disk...) leaves none of them
    half-done, and never the masks without the overlay. Returns the per-object files."""
    per_object = []
    if args.out_dir:
        width = max(3, len(str(len(chosen))))
        per_object = [Path(args.out_dir) / f"mask_{k:0{width}d}.png" for k in range(1, len(chosen) + 1)]
    jobs = []  # (path, option, image maker): made one at a time, so many objects never sit in memory together
    if label_png is not None:
        jobs.append((args.out, "--out", lambda: Image.fromarray(label_png)))
    if args.overlay:
        jobs.append((args.overlay, "--overlay",
                     lambda: overlay(image, chosen, [tuple(p) for p in points], [tuple(b) for b in boxes])))
    for path, mask in zip(per_object, chosen):
        jobs.append((path, "--out-dir", lambda m=mask: Image.fromarray(m.astype(np.uint8) * 255)))
    where, what = (args.out or args.out_dir), "output"
    try:
        with contextlib.ExitStack() as stack:
            for path, what, make in jobs:
                where = path
                make().save(stack.enter_context(atomic_path(path)), format="PNG")
            where, what = ", ".join(str(p) for p in (args.out, args.overlay, args.out_dir) if p), "outputs"
    except OSError as e:
        raise write_error(where, e, what) from None
    return per_object


def engine_options(args: argparse.Namespace) -> dict:
    """--dtype / --threads / --onnx-dir, for the engines that take them."""
    options = {}
    if args.dtype != "fp32":
        if args.engine not in ("torch", "auto"):
            raise InputError(f"--dtype {args.dtype} is a torch engine option; use --engine torch.")
        args.engine = "torch"
        options["dtype"] = args.dtype
    if args.threads is not None:
        if args.engine != "onnxruntime":
            raise InputError("--threads is an onnxruntime option; use --engine onnxruntime.")
        options["threads"] = args.threads
    if args.onnx_dir is not None:
        if args.engine not in ("onnxruntime", "tensorrt"):
            raise InputError("--onnx-dir is for --engine onnxruntime or tensorrt.")
        options["onnx_dir"] = args.onnx_dir
    return options


def _max_pixels(text: str) -> int | str | None:
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
    p.add_argument("--max-pixels", type=_max_pixels, default="pil", metavar="N",
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
    if "input_size" not in inspect.signature(entry.builder).parameters:
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


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=engine_names(),
                   help="what runs the model (default auto: the fastest measured for it here)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="torch engine encoder precision")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--onnx-dir", help="graphs written by `swiftsam export` instead of exporting on first use")


def cmd_export(args: argparse.Namespace) -> int:
    if args.precision != "fp32" and args.format == "onnx":
        raise InputError("ONNX graphs are exported in fp32; reduced precision is chosen when an engine is built "
                         "(--format tensorrt --precision fp16).")
    if args.format == "tensorrt":
        from .engines.tensorrt_engine import _trt

        _trt()  # a clear error before any work when TensorRT or the GPU is missing
    check_output_dir(args.out, "--out")  # before the model is loaded and traced
    model = load(args.model, checkpoint=args.checkpoint, **input_size_option(args, args.model))
    with writing(args.out, "--out"):  # a full disk or a folder that turns read-only: a clear error
        manifest = export_onnx(model, args.out, args.parts.split(","), opset=args.opset,
                               sam_single_mask=args.sam_single_mask)
    for part, info in manifest["files"].items():
        print(f"{part:12s} {Path(args.out) / info['file']}  ({', '.join(info['inputs'])} -> {', '.join(info['outputs'])})")
    if args.format == "tensorrt":
        import shutil

        from .engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(model.to("cuda"), precision=args.precision, onnx_dir=args.out)
        for part, path in engine.paths.items():
            with writing(args.out, "--out"), atomic_path(Path(args.out) / f"{part}.{args.precision}.engine") as tmp:
                shutil.copy2(path, tmp)
            print(f"{part:12s} {Path(args.out) / f'{part}.{args.precision}.engine'}  (TensorRT {args.precision})")
    return 0


def cmd_eval_coco(args: argparse.Namespace) -> int:
    from .eval import BASELINES, CocoImages, OracleSegmenter, PredictorSegmenter, evaluate_coco, format_summary
    from .eval.coco import load_detections

    dataset = CocoImages(args.images, args.annotations)
    detections = load_detections(args.detections, dataset) if args.detections else None
    if args.baseline and (args.checkpoint or args.model):
        raise InputError("--baseline replaces the model: drop --model / --checkpoint.")
    if args.baseline == "oracle":
        segmenter, name, settings = OracleSegmenter(dataset), "oracle", {}
    elif args.baseline:
        segmenter, name, settings = BASELINES[args.baseline](), args.baseline, {}
    else:
        name = args.model or DEFAULT_MODEL
        size = input_size_option(args, name)
        model = load(name, checkpoint=args.checkpoint, **size)
        predictor = Predictor(model, engine=args.engine, **engine_options(args))
        segmenter = PredictorSegmenter(predictor)
        settings = {"checkpoint": str(args.checkpoint) if args.checkpoint else None, "engine": predictor.engine.describe(),
                    **size}
    out = args.out or f"out/eval/{name}-{args.protocol}"
    summary = evaluate_coco(
        dataset, segmenter, out, args.protocol, variant=args.variant, clicks=args.clicks, detections=detections,
        limit=args.limit, model_name=name, settings=settings, overwrite=args.overwrite, max_pixels=args.max_pixels,
    )
    if summary is not None:  # rank 0
        print(format_summary(summary))
        print(f"wrote {Path(out) / 'summary.json'}")
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    from .everything import SAM_DEFAULTS, MaskGenerator
    from .everything.runner import list_images, load_box_prompts, run_everything

    images = list_images(args.source)
    boxes = None
    if args.strategy == "boxes":
        if not args.boxes:
            raise InputError("--strategy boxes needs --boxes DETECTIONS.json (COCO results: image_id, bbox, score).")
        boxes = load_box_prompts(args.boxes, images, args.annotations, args.box_score_thresh)
    elif args.boxes:
        raise InputError("--boxes is for --strategy boxes.")
    predictor = Predictor(load(args.model, checkpoint=args.checkpoint, **input_size_option(args, args.model)),
                          engine=args.engine, **engine_options(args))
    params = dict(  # None: the model's calibrated default (MaskGenerator resolves it)
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area, strategy=args.strategy,
        high_score_thresh=args.high_score_thresh,
    )
    progress = False if args.no_progress else None  # None: bars on a terminal only
    generator = MaskGenerator(predictor, output_mode="coco_rle", progress=progress if len(images) == 1 else False,
                              **params)
    params.update({k: getattr(generator, k) for k in SAM_DEFAULTS})  # the values in effect, recorded with the results
    settings = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                "engine": predictor.engine.describe(), "boxes": str(args.boxes) if args.boxes else None, **params}
    summary = run_everything(generator, args.source, args.out, settings, boxes=boxes, overwrite=args.overwrite,
                             max_pixels=args.max_pixels, progress=progress, strict=args.strict,
                             on_image=lambda im, n: print(f"{im.name}: {n} masks") if len(images) == 1 else None)
    return _everything_report(summary, args.out)


def _everything_report(summary: dict, out: str) -> int:
    """Print what an everything run did; exit 2 when no image has a result, else 0 (problems are reported)."""
    from .everything.runner import SUMMARY_NAME

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


def _list(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _size(text: str) -> int | None:
    return None if text == "native" else int(text)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, markdown, run_bench, table

    if args.report:
        try:
            doc = json.loads(Path(args.report).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"--report {args.report}: cannot read a bench result ({e}).") from None
        if "results" not in doc:
            raise InputError(f"--report {args.report}: not a swiftsam bench result.")
        print(markdown(doc) if args.markdown else table(doc))
        _bench_chart(doc, args.chart)
        return 0
    config = BenchConfig(
        models=args.models, engines=args.engines, precisions=args.precisions, batch_sizes=args.batch_sizes,
        input_sizes=args.input_sizes, prompts=args.prompts, stages=args.stages, warmup=args.warmup,
        iterations=args.iterations, min_time_s=args.min_time, compare_reference=args.compare_reference,
        device=args.device, threads=args.threads, channels_last=not args.no_channels_last, seed=args.seed,
        image=args.image,
    )
    doc = run_bench(config, out=args.out, resume=args.resume, progress=not args.no_progress)
    print(markdown(doc) if args.markdown else table(doc))
    _bench_chart(doc, args.chart)
    return 0


def _bench_chart(doc: dict, path: str | None) -> None:
    from .bench import chart

    if not path:
        return
    stages = [r["stage"] for r in doc["results"]]
    stage = "pipeline" if "pipeline" in stages else (stages[0] if stages else "pipeline")
    try:
        chart(doc, path, stage=stage)
    except ValueError as e:
        raise InputError(f"--chart: {e}") from None
    print(f"chart: {path}", file=sys.stderr)


def _setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from .train import load_config, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: getattr(args, k) for k in ("recipe", "student", "teacher", "images", "annotations", "val_images",
                                               "val_annotations", "out", "steps", "batch_size", "lr", "amp",
                                               "grad_accum", "teacher_cache", "device")}
    overrides.update(dict(args.set or []))
    config = load_config(args.config, overrides)
    info = train(config, progress=not args.no_progress)
    if info:
        print(json.dumps({k: info[k] for k in ("final_loss", "eval_at_start", "eval_at_end", "sha256")}, indent=2))
        print(f"model: {Path(config.out) / 'model.pt'}  card: {Path(config.out) / 'MODEL_CARD.md'}", file=sys.stderr)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from .train.pack import Source, pack

    summary = pack([Source.parse(x) for x in args.sources], args.out, size=args.size, davis_stride=args.davis_stride,
                   progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quant import run_quantize

    summary = run_quantize(args.model, args.calib, args.out, checkpoint=args.checkpoint, method=args.method,
                           backend=args.backend, observer=args.observer, calib_images=args.calib_images,
                           activations=args.activations, input_size=args.input_size, qat_steps=args.qat_steps,
                           qat_batch_size=args.qat_batch_size, qat_lr=args.qat_lr, progress=not args.no_progress,
                           val_images=args.val_images, val_annotations=args.val_annotations, val_count=args.val_count)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swiftsam", description="Fast Segment Anything models.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the model zoo and what is cached").set_defaults(fn=cmd_models)

    d = sub.add_parser("download", help="download and verify a model's official checkpoint")
    d.add_argument("name")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(fn=cmd_download)

    s = sub.add_parser("segment", help="segment one image from point and box prompts")
    s.add_argument("image")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model name (default {DEFAULT_MODEL})")
    s.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    s.add_argument("--point", type=_point, action="append", metavar="X,Y[,LABEL]",
                   help="a click: label 1 = foreground (default), 0 = background; repeatable")
    s.add_argument("--box", type=_box, action="append", metavar="X0,Y0,X1,Y1", help="a box; each box is one object")
    s.add_argument("--multimask", action="store_true", help="predict 3 candidates and keep the best-scored")
    s.add_argument("--out", metavar="FILE.png",
                   help="label PNG: 0 background, object k = k (255 for one object; 16-bit beyond 255 objects). "
                        "Where boxes overlap a pixel holds the LAST object covering it, so earlier objects can "
                        "lose pixels or vanish (a warning says how many): use --out-dir for whole masks")
    s.add_argument("--out-dir", metavar="DIR",
                   help="one 0/255 PNG per object: DIR/mask_001.png, mask_002.png ... (with or instead of --out)")
    s.add_argument("--overlay", help="also write the image with masks and prompts drawn over it")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    add_input_size_argument(s)
    add_engine_arguments(s)
    add_image_arguments(s)
    s.set_defaults(fn=cmd_segment)

    e = sub.add_parser("export", help="export a model to ONNX graphs (or TensorRT engines)")
    e.add_argument("model")
    e.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    e.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    e.add_argument("--out", required=True, help="output folder (graphs + manifest.json)")
    e.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="TensorRT engine precision")
    e.add_argument("--parts", default="encoder,decoder,sam_decoder",
                   help="comma-separated: encoder, decoder (batched), sam_decoder (SAM's ONNX interface)")
    e.add_argument("--opset", type=int, default=OPSET)
    e.add_argument("--sam-single-mask", action="store_true",
                   help="sam_decoder returns one mask, chosen as SAM's return_single_mask export does")
    add_input_size_argument(e)
    e.set_defaults(fn=cmd_export)

    a = sub.add_parser("everything", help="segment everything in an image or a folder (COCO-RLE JSON + overlay PNG)")
    a.add_argument("source", help="an image or a folder of images")
    a.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model name (default {DEFAULT_MODEL})")
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
    add_engine_arguments(a)
    add_image_arguments(a)
    a.set_defaults(fn=cmd_everything)

    b = sub.add_parser("bench", help="time models x engines x precisions x batch sizes (optionally vs the reference)")
    b.add_argument("--models", type=_list(str), default=[DEFAULT_MODEL], help="comma-separated zoo names")
    b.add_argument("--engines", type=_list(str), default=["torch"],
                   help="comma-separated: torch, torch-compile, torch-cudagraphs, onnxruntime, tensorrt")
    b.add_argument("--precisions", type=_list(str), default=["fp32"], help="comma-separated: fp32, bf16, fp16")
    b.add_argument("--batch-sizes", type=_list(int), default=[1], help="images per encoder / pipeline call")
    b.add_argument("--input-sizes", type=_list(_size), default=[None],
                   help="encoder input sides, or 'native' (other sizes only for models built for them, e.g. NanoSAM)")
    b.add_argument("--prompts", type=_list(int), default=[1, 8, 64], help="box prompts per decoder call")
    b.add_argument("--stages", type=_list(str), default=["encoder", "decoder", "pipeline"])
    b.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    b.add_argument("--iterations", type=int, default=10, help="timed calls (at least)")
    b.add_argument("--min-time", type=float, default=0.0, help="keep timing until this many seconds have passed")
    b.add_argument("--compare-reference", action="store_true",
                   help="also time the authors' code (segment-anything, mobilesam-mirror, efficientsam) on the same weights")
    b.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    b.add_argument("--threads", type=int, help="torch (and onnxruntime) threads")
    b.add_argument("--no-channels-last", action="store_true", help="torch engines: keep the default memory format")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--image", help="image for the pipeline (default: a synthetic 480 x 640 image)")
    b.add_argument("--out", help="results JSON, rewritten after every cell")
    b.add_argument("--resume", action="store_true", help="continue the sweep already in --out")
    b.add_argument("--chart", help="PNG: latency vs throughput per model")
    b.add_argument("--markdown", action="store_true", help="print markdown tables instead of the terminal table")
    b.add_argument("--report", metavar="JSON", help="do not measure: print (and chart) an earlier result")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=cmd_bench)

    t = sub.add_parser("train", help="distil or train a model (distill-encoder, distill-full, train-masks)")
    t.add_argument("config", nargs="?", help="YAML settings; flags below override them")
    t.add_argument("--recipe", choices=["distill-encoder", "distill-full", "train-masks"])
    t.add_argument("--student", help="zoo name of the student (e.g. nanosam-r18)")
    t.add_argument("--teacher", help="zoo name of the teacher (e.g. mobilesam); official weights")
    t.add_argument("--images", help="training images: a folder (searched recursively) or COCO's image folder")
    t.add_argument("--annotations", help="COCO instances JSON (distill-full, train-masks)")
    t.add_argument("--val-images", help="validation image folder (box-protocol evaluation)")
    t.add_argument("--val-annotations", help="validation COCO instances JSON")
    t.add_argument("--out", help="output folder; an interrupted run resumes from it")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int, help="per process")
    t.add_argument("--lr", type=float)
    t.add_argument("--amp", choices=["none", "bf16", "fp16"])
    t.add_argument("--grad-accum", type=int)
    t.add_argument("--teacher-cache", help="folder for cached teacher embeddings (distill-encoder)")
    t.add_argument("--device", help="auto (default), cpu or cuda")
    t.add_argument("--set", type=_setting, action="append", metavar="KEY=VALUE",
                   help="any other setting, VALUE as JSON (e.g. --set schedule=cosine --set 'freeze=[\"image_encoder\"]')")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    pk = sub.add_parser("pack", help="pack COCO / DAVIS sources into one class-agnostic training set of resized JPEGs")
    pk.add_argument("sources", nargs="+", metavar="SOURCE", help="coco:IMAGES:ANNOTATIONS or davis:ROOT")
    pk.add_argument("--out", required=True)
    pk.add_argument("--size", type=int, default=512, help="longest side of the packed images (default 512)")
    pk.add_argument("--davis-stride", type=int, default=3, help="keep every n-th DAVIS frame (default 3)")
    pk.add_argument("--no-progress", action="store_true")
    pk.set_defaults(fn=cmd_pack)

    q = sub.add_parser("quantize", help="W8A8 quantization of the image encoder: PTQ or QAT, for onnxruntime, "
                                         "torch (fake-quant) or TensorRT")
    q.add_argument("model")
    q.add_argument("--checkpoint", help="weights file (default: the official checkpoint); 'random' for experiments")
    q.add_argument("--input-size", type=int, help="builder input size (NanoSAM students trained at e.g. 512)")
    q.add_argument("--calib", required=True, help="folder of calibration images (QAT: the training images)")
    q.add_argument("--calib-images", type=int, default=32, help="how many calibration images (default 32)")
    q.add_argument("--method", choices=["ptq", "qat"], default="ptq")
    q.add_argument("--backend", choices=["onnxruntime", "torch", "tensorrt"], default="onnxruntime",
                   help="onnxruntime: QDQ int8 encoder in an export folder; torch: fake-quant checkpoint; "
                        "tensorrt: that folder built into INT8 engines")
    q.add_argument("--observer", choices=["minmax", "percentile", "mse", "entropy"], default="minmax",
                   help="activation range: minmax, percentile (99.99), mse (torch) or entropy (onnxruntime)")
    q.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                   help="onnxruntime activation type (uint8 runs the fast U8S8 kernels on x86)")
    q.add_argument("--qat-steps", type=int, default=200)
    q.add_argument("--qat-batch-size", type=int, default=4)
    q.add_argument("--qat-lr", type=float, default=1e-5)
    q.add_argument("--val-images", help="COCO val images: report the box-protocol agreement with the float model")
    q.add_argument("--val-annotations", help="COCO instances JSON for --val-images")
    q.add_argument("--val-count", type=int, default=20, help="how many val images (default 20)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(fn=cmd_quantize)

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
    add_image_arguments(c)
    c.set_defaults(fn=cmd_eval_coco)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SwiftSamError as e:
        print(f"swiftsam: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
