"""``swiftsam train``: distil or train a model from a YAML config and flags."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="distil or train a model (distill-encoder, distill-full, train-masks, "
                                     "train-video)")
    t.add_argument("config", nargs="?", help="YAML settings; flags below override them")
    t.add_argument("--recipe", choices=["distill-encoder", "distill-full", "train-masks", "train-video"])
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
    t.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..train import load_config, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if _recipe(args) == "train-video":  # the video model's memory modules: settings of their own (train/video.py)
        return _run_video(args)
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


def _recipe(args: argparse.Namespace) -> str | None:
    if args.recipe or not args.config:
        return args.recipe
    import yaml

    try:
        data = yaml.safe_load(Path(args.config).read_text())
    except (OSError, yaml.YAMLError):
        return None  # load_config reports it
    return data.get("recipe") if isinstance(data, dict) else None


def _run_video(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..train.video import load_video_config, train_video

    other = [f"--{k.replace('_', '-')}" for k in ("student", "teacher", "images", "annotations", "val_images",
                                                   "val_annotations", "batch_size", "amp", "grad_accum",
                                                   "teacher_cache", "device") if getattr(args, k) is not None]
    if other:
        raise InputError(f"train-video does not take {', '.join(other)}: its settings are train/video.py's "
                         "VideoTrainConfig (in the YAML, or --set KEY=VALUE).")
    overrides = {"out": args.out, "steps": args.steps, "lr": args.lr, **dict(args.set or [])}
    print(json.dumps(train_video(load_video_config(args.config, overrides)), indent=2))
    return 0
