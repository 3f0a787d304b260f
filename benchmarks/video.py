"""Frame time of SAM 2 video tracking at 1 / 4 / 16 objects (benchmarks/video.md).

    python benchmarks/video.py --frames ../shared/data/davis2016/JPEGImages/blackswan --input-size 512 \
        --objects 1,4,16 --track 6 --reference --out benchmarks/video.json

Objects are clicks on a grid over frame 0; ``propagate_in_video`` then tracks ``--track`` frames; the time per
frame (median over those frames, the first tracked frame excluded as warm-up) is measured for swiftsam's
``VideoPredictor`` with all objects in one batch, with one object at a time (sam2's way, our code), and, with
``--reference``, for sam2's ``SAM2VideoPredictor`` holding the same (random) weights. The image encoder's time per
frame is measured alone too (it is the same for every object count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import swiftsam  # noqa: E402
from swiftsam.video import VideoPredictor  # noqa: E402
from swiftsam.video.frames import open_video, to_model_input  # noqa: E402


def clicks(n: int, w: int, h: int) -> list[list[float]]:
    side = int(n**0.5 + 0.999)
    return [[w * (i % side + 0.5) / side, h * (i // side + 0.5) / side] for i in range(n)]


def frame_times(p, video: str, n_obj: int, track: int, w: int, h: int) -> list[float]:
    with torch.inference_mode():
        state = p.init_state(video)
        for i, xy in enumerate(clicks(n_obj, w, h)):
            p.add_new_points_or_box(state, 0, i, points=[xy], labels=[1])
        times, t0 = [], time.perf_counter()
        for f, _, masks in p.propagate_in_video(state, max_frame_num_to_track=track):
            masks.sum().item()
            t1 = time.perf_counter()
            if f > 0:  # frame 0 holds the prompts' results (memory encoding only)
                times.append(t1 - t0)
            t0 = t1
    return times[1:] if len(times) > 1 else times


def reference(model):
    import tests.conftest  # noqa: F401  (stubs torchvision for sam2)
    from sam2.build_sam import build_sam2_video_predictor

    trunk = model.image_encoder.trunk
    flags = [f"++model.image_size={model.contract.image.input_size}",
             f"++model.image_encoder.trunk.stages=[{','.join(map(str, trunk.stages))}]",
             f"++model.image_encoder.trunk.global_att_blocks=[{','.join(map(str, trunk.global_att_blocks))}]",
             "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
             "++model.binarize_mask_from_pts_for_mem_enc=true"]
    ref = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                                     hydra_overrides_extra=flags, apply_postprocessing=False)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", required=True, help="a folder of JPEG frames")
    ap.add_argument("--model", default="sam2.1-hiera-tiny")
    ap.add_argument("--input-size", type=int, default=512)
    ap.add_argument("--objects", default="1,4,16")
    ap.add_argument("--track", type=int, default=6, help="frames to track after the prompted one")
    ap.add_argument("--reference", action="store_true", help="also time sam2's SAM2VideoPredictor")
    ap.add_argument("--reference-max-objects", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp()
    names = sorted(p for p in os.listdir(args.frames) if p.lower().endswith((".jpg", ".jpeg")))[: args.track + 1]
    for name in names:
        shutil.copy(os.path.join(args.frames, name), tmp)
    src = open_video(tmp)
    w, h = src.width, src.height
    model = swiftsam.build(args.model, input_size=args.input_size).eval()
    with torch.no_grad():  # objects present (random weights would make presence a coin toss; the work is the same)
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
    with torch.inference_mode():
        x = to_model_input(src[0], args.input_size)
        model.forward_backbone(x)
        enc = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.forward_backbone(x)
            enc.append(time.perf_counter() - t0)
    rows = []
    impls = [("swiftsam, objects in one batch", VideoPredictor(model, max_batch=None)),
             ("swiftsam, one object at a time", VideoPredictor(model, max_batch=1))]
    if args.reference:
        impls.append(("sam2 SAM2VideoPredictor", reference(model)))
    load = os.getloadavg()[0]
    for n in [int(v) for v in args.objects.split(",")]:
        for name, p in impls:
            if name.startswith("sam2") and n > args.reference_max_objects:
                continue
            t = frame_times(p, tmp, n, args.track, w, h)
            rows.append({"objects": n, "implementation": name, "frame_ms": 1000 * statistics.median(t),
                         "frames_timed": len(t)})
            print(f"{n:3d} objects  {name:32s} {1000 * statistics.median(t):8.1f} ms/frame", flush=True)
    result = {"model": args.model, "input_size": args.input_size, "video": f"{w}x{h}",
              "image_encoder_ms": 1000 * statistics.median(enc), "threads": torch.get_num_threads(),
              "load_average_1min_at_start": load, "rows": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
