"""``swiftsam track``: one object through a video (file or folder of frames) with any image model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import DEFAULT_MODEL
from ..errors import InputError
from ..predictor import Predictor
from .common import add_device_argument, add_engine_arguments, add_input_size_argument, box, engine_options, load_model


def _xy(text: str) -> list[float]:
    from .common import _numbers

    return _numbers(text, (2,), "--point (x,y)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..apps.tracker import TrackerConfig

    c = TrackerConfig()
    t = sub.add_parser("track", help="track one object through a video: SAM 2.1 models with their memory, image "
                                     "models frame by frame (masks as PNGs)")
    t.add_argument("video", help="a video file (OpenCV reads it: the eval extra) or a folder of frames")
    start = t.add_mutually_exclusive_group(required=True)
    start.add_argument("--box", type=box, help="the object on the first frame: x0,y0,x1,y1 pixels")
    start.add_argument("--point", type=_xy, help="the object on the first frame: a point x,y inside it")
    start.add_argument("--mask", help="the object on the first frame: a mask image (non-zero = object)")
    t.add_argument("--out", required=True, help="folder for 00000.png ... (0/255) and track.json")
    t.add_argument("--max-frames", type=int, help="stop after this many frames")
    t.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL})")
    t.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    add_input_size_argument(t)
    t.add_argument("--mask-input", action=argparse.BooleanOptionalAction, default=c.mask_input,
                   help="prompt each frame with the previous frame's low-res logits too (default on)")
    t.add_argument("--interior-point", action=argparse.BooleanOptionalAction, default=c.point,
                   help="prompt each frame with a point at the previous mask's interior maximum too (default off)")
    t.add_argument("--box-margin", type=float, default=c.box_margin,
                   help=f"grow the previous mask's box by this fraction per side (default {c.box_margin})")
    t.add_argument("--min-score", type=float, default=c.min_score,
                   help=f"a predicted IoU below this is a loss (default {c.min_score})")
    t.add_argument("--max-area-change", type=float, default=c.max_area_change,
                   help=f"an area change by more than this factor is a loss (default {c.max_area_change})")
    add_device_argument(t)
    add_engine_arguments(t)
    t.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..apps.tracker import Tracker, TrackerConfig, read_frames, write_track
    from ..apps.video_track import is_video_model, track_with_memory
    from ..image_io import load_image
    from ..utils import check_output_dir

    out = check_output_dir(args.out, "--out")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {args.max_frames}.")
    if args.max_area_change <= 1:
        raise InputError(f"--max-area-change must be > 1 (a factor), got {args.max_area_change}.")
    mask = None
    if args.mask:
        mask = load_image(args.mask).max(axis=2) > 0
    if args.box_margin < 0:
        raise InputError(f"--box-margin must be >= 0 (a fraction of the box), got {args.box_margin}.")
    config = TrackerConfig(mask_input=args.mask_input, point=args.interior_point, box_margin=args.box_margin,
                           min_score=args.min_score, max_area_change=args.max_area_change)
    model = load_model(args, args.model)
    start = None if args.box is None else np.array(args.box)
    if is_video_model(model):  # SAM 2.1: its own memory (video.VideoPredictor)
        frames = track_with_memory(model, read_frames(args.video, args.max_frames), box=start, mask=mask,
                                   point=args.point)
    else:  # image-only models: each frame prompted from the previous result
        predictor = Predictor(model, engine=args.engine, **engine_options(args))
        frames = Tracker(predictor, config).track(read_frames(args.video, args.max_frames), box=start, mask=mask,
                                                  point=args.point)
    summary = write_track(frames, out)
    print(f"{summary['frames']} frames tracked, {summary['lost']} lost; masks and track.json in {Path(out)}")
    return 0
