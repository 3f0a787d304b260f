"""Frame time of SAM 2 video tracking at 1 / 4 / 16 objects (benchmarks/video.md).

    python benchmarks/video.py --frames ../shared/data/davis2016/JPEGImages/blackswan --input-size 512 \
        --objects 1,4,16 --track 6 --reference --out benchmarks/video.json

Objects are clicks on a grid over frame 0; ``propagate_in_video`` then tracks ``--track`` frames; the time per
frame (median and minimum over those frames, the first tracked frame excluded as warm-up) is measured for swiftsam's
``VideoPredictor`` with all objects in one batch, with one object at a time (sam2's way, our code), and, with
``--reference``, for sam2's ``SAM2VideoPredictor`` holding the same (random) weights. The image encoder's time per
frame is measured alone too (it is the same for every object count).

``--precision fp32,bf16``: each precision in turn; swiftsam's ``VideoPredictor(dtype=...)``, sam2 in bf16 the way
its README runs it (``torch.autocast("cpu", torch.bfloat16)`` around the whole session). Every bf16 row also gives
its masks' agreement with the same implementation's fp32 masks (IoU per object and frame, mean and minimum), when
fp32 ran too. ``--compile``: also ``VideoPredictor(compile=True)`` one object at a time; its first session (which
compiles) is a warm-up, reported with ``compile_s_approx`` (its wall time less a session's frames at the compiled
speed).

The implementations' sessions run in lockstep, one frame each in turn, so that load from other jobs on a shared
machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import swiftsam  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402
from swiftsam.video import VideoPredictor  # noqa: E402
from swiftsam.video.frames import open_video, to_model_input  # noqa: E402
from swiftsam.video.memory import Sam2Tracker  # noqa: E402


def clicks(n: int, w: int, h: int) -> list[list[float]]:
    side = int(n**0.5 + 0.999)
    return [[w * (i % side + 0.5) / side, h * (i // side + 0.5) / side] for i in range(n)]


def session(p, video: str, n_obj: int, track: int, w: int, h: int, autocast: bool = False):
    """A tracking session, stepped one frame per ``next()``: prompts on frame 0 at the start, then yields (frame,
    seconds the frame took, its masks: objects x H x W bool)."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with torch.inference_mode(), ctx():
        state = p.init_state(video)
        for i, xy in enumerate(clicks(n_obj, w, h)):
            p.add_new_points_or_box(state, 0, i, points=[xy], labels=[1])
        frames = p.propagate_in_video(state, max_frame_num_to_track=track)
    while True:
        with torch.inference_mode(), ctx():
            t0 = time.perf_counter()
            item = next(frames, None)
            if item is None:
                return
            fg = item[2][:, 0] > 0
            fg.sum().item()
            dt = time.perf_counter() - t0
        yield item[0], dt, fg


def lockstep(sessions: list) -> list[tuple[list[float], torch.Tensor]]:
    """Step the sessions frame by frame in turn (a load that comes and goes on a shared machine then hits every
    implementation alike): per session (times of the tracked frames but frame 0 and the first, all masks)."""
    out = [([], []) for _ in sessions]
    live = list(range(len(sessions)))
    while live:
        for k in list(live):
            item = next(sessions[k], None)
            if item is None:
                live.remove(k)
                continue
            f, dt, fg = item
            out[k][1].append(fg)
            if f > 0:  # frame 0 holds the prompts' results (memory encoding only)
                out[k][0].append(dt)
    return [((t[1:] if len(t) > 1 else t), torch.stack(m)) for t, m in out]


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mask IoU per object and frame of two runs (frames x objects x H x W bool): mean, minimum (both empty: 1)."""
    inter = (a & b).flatten(2).sum(-1).float()
    union = (a | b).flatten(2).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return {"mask_iou_mean": round(float(iou.mean()), 4), "mask_iou_min": round(float(iou.min()), 4)}


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
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16 (default fp32)")
    ap.add_argument("--compile", action="store_true",
                    help="also time VideoPredictor(compile=True), one object at a time")
    ap.add_argument("--no-batch", action="store_true", help="skip swiftsam's objects-in-one-batch rows")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    precisions = [v.strip() for v in args.precision.split(",") if v.strip()]
    if not precisions or any(v not in ("fp32", "bf16") for v in precisions):
        ap.error(f"--precision takes fp32 and / or bf16, comma-separated; got {args.precision!r}")
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
    x = to_model_input(src[0], args.input_size)
    enc = {}
    for prec in precisions:
        tracker = Sam2Tracker(model, dtype=prec)
        with torch.inference_mode():
            tracker.backbone(x)
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                tracker.backbone(x)
                ts.append(time.perf_counter() - t0)
        enc[prec] = 1000 * statistics.median(ts)
        print(f"image encoder {prec}: {enc[prec]:.1f} ms", flush=True)
        del tracker
    ref = reference(model) if args.reference else None
    impls = []  # (name, precision, predictor, sam2 under autocast, compiled)
    for prec in precisions:
        if not args.no_batch:
            impls.append(("swiftsam, objects in one batch", prec, VideoPredictor(model, max_batch=None, dtype=prec),
                          False, False))
        impls.append(("swiftsam, one object at a time", prec, VideoPredictor(model, max_batch=1, dtype=prec),
                      False, False))
        if args.compile:
            impls.append(("swiftsam, one object at a time, compiled", prec,
                          VideoPredictor(model, max_batch=1, dtype=prec, compile=True), False, True))
        if ref is not None:
            impls.append(("sam2 SAM2VideoPredictor", prec, ref, prec == "bf16", False))
    load = os.getloadavg()
    rows, masks = [], {}
    counts = [int(v) for v in args.objects.split(",")]
    warmup = {}
    for name, prec, p, autocast, compiled in impls:
        if compiled:  # a whole session first: it compiles (the graphs then serve every object count)
            t0 = time.perf_counter()
            lockstep([session(p, tmp, counts[0], args.track, w, h)])
            warmup[(name, prec)] = time.perf_counter() - t0
            print(f"{prec} {name}: compiling warm-up session {warmup[(name, prec)]:.1f} s", flush=True)
    for n in counts:
        todo = [i for i in impls if not (i[0].startswith("sam2") and n > args.reference_max_objects)]
        results = lockstep([session(p, tmp, n, args.track, w, h, autocast=autocast) for _, _, p, autocast, _ in todo])
        for (name, prec, _, _, compiled), (t, m) in zip(todo, results):
            row = {"objects": n, "implementation": name, "precision": prec}
            row.update(frame_ms=1000 * statistics.median(t), frame_ms_min=1000 * min(t), frames_timed=len(t))
            if compiled and n == counts[0]:  # the warm-up less a session's frames at the compiled speed
                row["warmup_session_s"] = round(warmup[(name, prec)], 1)
                row["compile_s_approx"] = round(warmup[(name, prec)] - (args.track + 1) * statistics.median(t), 1)
            masks[(n, name, prec)] = m
            base = (n, name.replace(", compiled", ""), "fp32")
            if (n, name, prec) != base and base in masks:
                row.update(agreement(m, masks[base]))
            rows.append(row)
            extra = "".join(f"  {k} {row[k]}" for k in ("mask_iou_mean", "mask_iou_min", "compile_s_approx")
                            if k in row)
            print(f"{n:3d} objects  {prec}  {name:40s} {row['frame_ms']:8.1f} ms/frame (min {row['frame_ms_min']:.1f})"
                  f"{extra}", flush=True)
    result = {"model": args.model, "input_size": args.input_size, "video": f"{w}x{h}",
              "image_encoder_ms": enc, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": machine(), "load_average_at_start": list(load), "load_average_at_end": list(os.getloadavg()),
              "rows": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        with atomic_path(args.out) as tmp_out:
            Path(tmp_out).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


def machine() -> str:
    """The CPU's model name and the cores torch may use."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}, CPU capability {capability}"


if __name__ == "__main__":
    main()
