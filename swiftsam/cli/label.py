"""``swiftsam label``: detections, a detector or person keypoints -> COCO instance masks (results JSON)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..api import DEFAULT_MODEL
from ..errors import InputError
from ..predictor import Predictor
from .common import (
    add_device_argument, add_engine_arguments, add_image_arguments, add_input_size_argument, add_ray_arguments,
    check_ray_arguments, engine_options, load_model,
)


MANIFEST_SUFFIXES = (".txt", ".lst")


def _classes(text: str) -> set[int]:
    try:
        return {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes takes comma-separated category ids, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..apps.detectors import DETECTOR_HELP
    from ..apps.keypoints import DEFAULT_PERSON_PROMPT as P
    from ..apps.keypoints import PARTS

    a = sub.add_parser("label", help="detections, a detector or person keypoints -> COCO instance masks")
    a.add_argument("images", help="an image, a folder of images, or a manifest: a .txt file of image paths, one a line")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", help="a COCO results JSON (image_id, bbox [x, y, w, h], score, category_id) or a "
                                          "folder of YOLO txt files (<image stem>.txt: class cx cy w h [conf])")
    src.add_argument("--keypoints", help="COCO person keypoints: a keypoints annotation file or a pose estimator's "
                                         "results list (image_id, keypoints [x, y, v] x 17, score)")
    src.add_argument("--detector", help=DETECTOR_HELP)
    a.add_argument("--annotations", help="COCO JSON whose images[].file_name map files to image ids (default: numeric "
                                         "file names, else positions in the sorted list)")
    a.add_argument("--out", required=True,
                   help="results JSON to write; an interrupted run resumes (<stem>.progress.jsonl)")
    a.add_argument("--model", help=f"zoo model name (default {DEFAULT_MODEL}, or the model of --onnx-dir)")
    a.add_argument("--checkpoint", help="local checkpoint instead of the official download")
    add_input_size_argument(a)
    a.add_argument("--score-thresh", type=float, default=0.0, help="ignore detections / people scored below this")
    a.add_argument("--classes", type=_classes, help="only these category ids, e.g. 1,3 (YOLO files: class ids)")
    a.add_argument("--text", action="append", default=[], help="owlvit / grounding-dino: what to find (repeatable)")
    a.add_argument("--category-id", type=int, default=1,
                   help="category id of haar detections, and of the first --text (default 1: COCO's person)")
    a.add_argument("--candidates", choices=["multimask", "single", "all"],
                   help="which decoder outputs compete for each mask (default: multimask for boxes, "
                        f"{P.candidates} for keypoints)")
    a.add_argument("--part", default="person", choices=list(PARTS),
                   help="--keypoints: the whole person (default) or a body part from its keypoints")
    a.add_argument("--visibility", type=int, choices=[1, 2], default=P.min_visibility,
                   help=f"--keypoints: use keypoints with COCO visibility >= this (default {P.min_visibility}: "
                        "labelled ones; 2: marked visible)")
    a.add_argument("--no-keypoint-box", action="store_true", help="--keypoints: points only, without their box")
    a.add_argument("--box-margin", type=float, default=P.box_margin,
                   help=f"--keypoints: grow the keypoints' box by this fraction per side (default {P.box_margin})")
    a.add_argument("--background", action=argparse.BooleanOptionalAction, default=P.background,
                   help="--keypoints: other people's keypoints as background points "
                        f"(default {'on' if P.background else 'off'})")
    a.add_argument("--evaluate", action="store_true", help="with --annotations: print the results' COCO mask AP")
    a.add_argument("--overwrite", action="store_true", help="start again, discarding an earlier run's progress")
    a.add_argument("--strict", action="store_true", help="stop at the first bad image or item (default: skip, report)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar (it shows on a terminal only)")
    add_ray_arguments(a, "label", "the same results file, progress log and report")
    add_device_argument(a)
    add_engine_arguments(a)
    add_image_arguments(a)
    a.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from ..apps.detections import image_ids, load_detections
    from ..apps.detectors import get_detector
    from ..apps.keypoints import PersonPrompt, load_keypoints, to_people
    from ..apps.label import box_prompts, keypoint_prompts, label_images, settings_of, summary_path
    from ..image_io import list_images
    from ..utils import check_output_file

    if Path(args.images).suffix.lower() in MANIFEST_SUFFIXES and Path(args.images).is_file():
        from ..apps.ray_batch import read_manifest

        images = read_manifest(args.images)
    else:
        images = list_images(args.images)
    out = check_output_file(args.out)
    check_ray_arguments(args)
    if args.evaluate and not args.annotations:
        raise InputError("--evaluate compares with ground truth: give --annotations (the images' COCO JSON).")
    if args.part != "person" and not args.keypoints:
        raise InputError("--part takes body parts from keypoints: use it with --keypoints.")
    ids = image_ids(images, args.annotations)
    prompt = make_prompts = None
    if args.detections:
        dets = load_detections(args.detections, images, ids)
        source = {"detections": str(args.detections)}

        def prompts_for(path, array):
            return box_prompts(dets[path.name].filtered(args.score_thresh, args.classes), array.shape[:2])
    elif args.detector:
        detector = get_detector(args.detector, args.text, args.category_id)
        source = {"detector": detector.name, "text": args.text}

        def make_prompts():  # on each Ray actor: a detector of its own
            own = get_detector(args.detector, args.text, args.category_id)

            def prompts_for(path, array):
                return box_prompts(own.detect(array).filtered(args.score_thresh, args.classes), array.shape[:2])
            return prompts_for

        def prompts_for(path, array):
            return box_prompts(detector.detect(array).filtered(args.score_thresh, args.classes), array.shape[:2])
    else:
        records = load_keypoints(args.keypoints)
        by_id: dict[int, list[dict]] = {}
        for r in records:
            by_id.setdefault(r["image_id"], []).append(r)
        if records and not set(by_id) & set(ids.values()):
            raise InputError(f"none of the image ids in {args.keypoints} belong to the images given: pass "
                             f"--annotations (the COCO file whose images[].file_name maps files to ids).")
        prompt = PersonPrompt(min_visibility=args.visibility, box=not args.no_keypoint_box, box_margin=args.box_margin,
                              background=args.background, candidates=args.candidates or PersonPrompt().candidates)
        source = {"keypoints": str(args.keypoints), "part": args.part}

        def prompts_for(path, array):
            people = [p for p in to_people(by_id.get(ids[path.name], []))
                      if p.score >= args.score_thresh and (args.classes is None or p.category_id in args.classes)]
            return keypoint_prompts(people, array.shape[:2], prompt, args.part)
    candidates = prompt.candidates if prompt else (args.candidates or "multimask")
    map_images = None
    if args.ray and not args.onnx_dir:  # the model loads on the actors only
        from ..zoo import get_entry
        from .common import input_size_option

        predictor = None
        args.model = args.model or DEFAULT_MODEL
        input_size = input_size_option(args, args.model).get("input_size") or get_entry(args.model).spec.input_size
    else:
        predictor = Predictor(load_model(args, args.model), engine=args.engine, **engine_options(args))
        input_size = predictor.model.spec.input_size
    if args.ray:
        map_images = _ray_map_images(args, ids, make_prompts or (lambda: prompts_for), candidates)
    settings = settings_of(prompt, model=args.model, checkpoint=str(args.checkpoint) if args.checkpoint else None,
                           input_size=input_size, candidates=candidates,
                           score_thresh=args.score_thresh, classes=sorted(args.classes) if args.classes else None,
                           annotations=str(args.annotations) if args.annotations else None, **source)
    summary = label_images(predictor, images, ids, prompts_for, out, settings, candidates=candidates,
                           overwrite=args.overwrite, progress=False if args.no_progress else None, strict=args.strict,
                           max_pixels=args.max_pixels, map_images=map_images)
    print(f"{summary['results']} masks on {summary['done'] + summary['resumed']} image(s) "
          f"({summary['resumed']} resumed); wrote {out}")
    _report(summary, summary_path(out))
    if args.evaluate:
        _evaluate(out, args.annotations, [ids[im.name] for im in images])
    if summary["failed"] and summary["done"] == 0 and summary["resumed"] == 0:
        return 2
    return 0


def _ray_map_images(args: argparse.Namespace, ids: dict[str, int], make_prompts: Callable, candidates: str):
    """--ray: label_one on Ray Data actors (apps.ray_batch), on the cluster --ray-address names."""
    import copy

    from ..apps.ray_batch import ray_map_images
    from ..serve.ray_serve import connect

    device = (args.device or "auto").strip().lower()
    gpus = 1.0 if device.startswith("cuda") else 0.0
    remote = copy.copy(args)
    remote.device = "cuda" if gpus else args.device  # Ray gives each actor its GPU as its cuda:0

    def make_predictor():
        return Predictor(load_model(remote, remote.model), engine=remote.engine, **engine_options(remote))

    map_images = ray_map_images(make_predictor, make_prompts, ids, candidates=candidates, max_pixels=args.max_pixels,
                                concurrency=args.ray_concurrency, num_gpus=gpus)
    n = args.ray_concurrency
    connect(args.ray_address, need={"GPU": n * gpus} if gpus else {"CPU": n}, what=f"{n} actor(s)")
    return map_images


def _report(summary: dict, path: Path) -> None:
    def listing(items: list[dict], key: str) -> str:
        shown = "".join(f"\n  {it['image']}: {it.get('what', '') + ': ' if it.get('what') else ''}{it[key]}"
                        for it in items[:10])
        return shown + (f"\n  ... and {len(items) - 10} more" if len(items) > 10 else "")

    if summary["clipped"]:
        print(f"swiftsam: {summary['clipped']} box(es) at most 1 px outside their image clipped to it", file=sys.stderr)
    if summary["skipped"]:
        print(f"swiftsam: warning: {len(summary['skipped'])} item(s) skipped (listed in {path}):"
              f"{listing(summary['skipped'], 'reason')}", file=sys.stderr)
    if summary["failed"]:
        print(f"swiftsam: warning: {len(summary['failed'])} image(s) failed and were skipped (listed in {path}; "
              f"--strict stops at the first):{listing(summary['failed'], 'error')}", file=sys.stderr)


def _evaluate(results: Path, annotations: str, image_ids: list[int]) -> None:
    """COCO mask AP of the results over the images labelled (the annotation file may hold more)."""
    import contextlib
    import io
    import json
    from types import SimpleNamespace

    from ..eval.coco import coco_segm_ap
    from ..optional import require

    require("pycocotools", "--evaluate")
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotations))
    except Exception as e:
        raise InputError(f"{annotations} is not a COCO annotation file ({type(e).__name__}: {e}).") from None
    ap = coco_segm_ap(json.loads(results.read_text()), SimpleNamespace(coco=coco), image_ids)
    print("mask AP  " + "  ".join(f"{k} {v:.4f}" for k, v in ap.items()))
