"""``swiftsam segment``: one image, point and box prompts -> label PNG, per-object PNGs, overlay, JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..api import DEFAULT_MODEL
from ..errors import InputError
from ..image_io import load_image
from ..predictor import Predictor
from ..utils import atomic_path, check_output_dir, check_output_file, write_error
from ..visualize import MAX_LABELS, hidden_objects, label_image, overlay
from .common import (
    add_device_argument, add_engine_arguments, add_image_arguments, add_input_size_argument, box, engine_options,
    load_model, point,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("segment", help="segment one image from point and box prompts")
    s.add_argument("image")
    s.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL}, or the model of --onnx-dir)")
    s.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    s.add_argument("--point", type=point, action="append", metavar="X,Y[,LABEL]",
                   help="a click: label 1 = foreground (default), 0 = background; repeatable")
    s.add_argument("--box", type=box, action="append", metavar="X0,Y0,X1,Y1", help="a box; each box is one object")
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
    add_device_argument(s)
    add_image_arguments(s)
    s.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
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
    model = load_model(args, args.model)
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
