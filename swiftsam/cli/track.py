"""``swiftsam track``: objects through a video (file or folder of frames) with any model (apps.video_track)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from ..predictor import Predictor
from .common import add_device_argument, add_engine_arguments, add_input_size_argument, engine_options, load_model


# the model `swiftsam track` uses when --model is not given
DEFAULT_TRACK_MODEL = "swiftsam-r18-video"  # the project's own video model (docs/models.md, "Video model")

PROMPT_HELP = """prompts: --box x0,y0,x1,y1[@FRAME][#OBJ], --point x,y[,label][@FRAME][#OBJ] (label 1 foreground,
the default; 0 background), --mask PATH[@FRAME][#OBJ] (non-zero pixels = the object); each repeatable, in video
pixels. FRAME: the frame it is on (default 0); OBJ: the object it is for (default 1; 1..255). Clicks and a box of
one object on one frame go together; a mask stands alone. An object appears from its first prompt's frame on; a
prompt on a later frame corrects it there (SAM 2 models: with their memory; image models: it starts again there).
Example: --box 10,20,200,180 --box 300,40,420,200#2 --point 150,90,0@12 (object 1 corrected on frame 12).

outputs in --out: 00000.png ... label images (0 background; one object: 255; several: the object's id),
track.json (per frame and object: COCO RLE, score, box, area, lost), overlay.mp4 (needs OpenCV: the eval extra),
track.jsonl (the log a killed run resumes from: run the same command again; frames written are not redone)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..apps.tracker import TrackerConfig

    c = TrackerConfig()
    t = sub.add_parser("track", help="track objects through a video: SAM 2.1 models with their memory, image "
                                     "models frame by frame (label PNGs, RLE JSON, overlay mp4; resumable)",
                       epilog=PROMPT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("video", help="a video file (OpenCV reads it: the eval extra) or a folder of frames")
    t.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1[@FRAME][#OBJ]",
                   help="a box around object OBJ (default 1) on frame FRAME (default 0); repeatable")
    t.add_argument("--point", action="append", default=[], metavar="x,y[,l][@FRAME][#OBJ]",
                   help="a click (label l: 1 foreground, the default, 0 background); repeatable")
    t.add_argument("--mask", action="append", default=[], metavar="PATH[@FRAME][#OBJ]",
                   help="a mask image of the object (non-zero = object); repeatable")
    t.add_argument("--out", required=True, help="folder for 00000.png ..., track.json, overlay.mp4 (see below)")
    t.add_argument("--overwrite", action="store_true",
                   help="start again when --out holds a track of other settings (default: resume the same one)")
    t.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=None,
                   help="write overlay.mp4 (default: when OpenCV is installed; --overlay requires it)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar on a terminal (default on)")
    t.add_argument("--max-frames", type=int, help="stop after this many frames")
    t.add_argument("--model", help=f"zoo model name (default {DEFAULT_TRACK_MODEL})")
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
    from ..apps.tracker import TrackerConfig
    from ..apps.video_track import is_video_model, load_mask_file, open_frames, parse_prompt, run_track
    from ..utils import check_output_dir

    out = check_output_dir(args.out, "--out")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be >= 1, got {args.max_frames}.")
    if args.max_area_change <= 1:
        raise InputError(f"--max-area-change must be > 1 (a factor), got {args.max_area_change}.")
    if args.box_margin < 0:
        raise InputError(f"--box-margin must be >= 0 (a fraction of the box), got {args.box_margin}.")
    prompts = [parse_prompt(kind, text, f"--{kind} {text!r}", load_mask_file)
               for kind in ("box", "point", "mask") for text in getattr(args, kind)]
    if not prompts:
        raise InputError("give at least one prompt: --box x0,y0,x1,y1, --point x,y or --mask PATH (each with "
                         "optional @FRAME and #OBJ; see swiftsam track --help).")
    frames = open_frames(args.video, args.max_frames)  # before the model: a bad video costs no load
    config = TrackerConfig(mask_input=args.mask_input, point=args.interior_point, box_margin=args.box_margin,
                           min_score=args.min_score, max_area_change=args.max_area_change)
    model = load_model(args, args.model or DEFAULT_TRACK_MODEL)
    video = is_video_model(model)
    video_options = {}
    if video:  # VideoPredictor (torch): --dtype fp32 or bf16 only
        if args.engine not in ("auto", "torch") or args.threads is not None or args.onnx_dir is not None \
                or args.dtype not in ("fp32", "bf16"):
            raise InputError("SAM 2 models track video with torch (VideoPredictor), in --dtype fp32 or bf16: drop "
                             "--engine / --threads / --onnx-dir.")
        video_options, options = {"dtype": args.dtype}, {}
    else:
        options = engine_options(args)
    settings = {"video": str(Path(args.video).resolve()), "model": args.model, "checkpoint": args.checkpoint,
                "input_size": getattr(args, "input_size", None),
                "tracker": ("sam2-memory" if args.dtype == "fp32" else {"sam2-memory": video_options}) if video
                else {"image": asdict(config), "engine": args.engine}}  # fp32: as written before --dtype
    summary = run_track(model, frames, prompts, out, settings, overwrite=args.overwrite, overlay=args.overlay,
                        progress=args.progress, video_options=video_options,
                        predictor_factory=lambda: Predictor(model, engine=args.engine, **options),
                        tracker_config=config)
    done = summary["resumed_from"]
    resumed = (" (all were done already)" if done == summary["frames"] else f" (resumed at frame {done})" if done
               else "")
    objects = ", ".join(f"{o}: {summary['lost_per_object'].get(str(o), 0)} lost" for o in summary["objects"])
    print(f"{summary['frames']} frames tracked{resumed}, objects {objects}; label PNGs and track.json in {Path(out)}; "
          f"overlay: {summary['overlay']}")
    return 0
