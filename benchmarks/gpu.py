"""Issue 19's GPU targets, measured in one time-boxed run with random weights (benchmarks/gpu.md).

    python benchmarks/gpu.py [--budget 420] [--out benchmarks/gpu.json] [--only SECTION,...]
    python benchmarks/gpu.py --smoke --device cpu --out /tmp/gpu.json     # tiny sizes: the script's own test

Sections, most important first (each one a few `swiftsam bench` sub-sweeps through ``swiftsam.bench.run_bench``,
the same cells as ``swiftsam bench --device cuda ...``; the command of each is recorded with it):

- nanosam_pipeline     nanosam-r18, uint8 640x480 images -> masks at image size, batch 32, bf16, compiled and
                       eager; the encoder's own throughput at that batch (compiled bf16 and eager), and the
                       pipeline / encoder ratio (target >= 2,000 img/s and >= 70% of the compiled encoder);
- mobilesam_pipeline   the same for mobilesam (target >= 700 img/s);
- decoder              the CUDA-graph decoder's agreement with the eager one (nanosam-r18, sam2.1-hiera-tiny;
                       1 to 70 boxes, with and without mask inputs); nanosam-r18's decoder, 1 and 64 box prompts,
                       torch fp32 and bf16 (the engine's decoder_dtype follows its dtype), eager and with CUDA
                       graphs (the encoder at batch 1, the decoder per prompt-count bucket; target <= 1 ms / <= 5 ms);
- efficientvit_reference  efficientvit-sam-l0's encoder vs the authors' code (`--compare-reference`) at batch 1
                       and 32, fp32 and bf16, ratios in the same precision; with and without channels_last;
- train                the train-masks teacher recipe (benchmarks/configs/swiftsam-teacher.yaml: a ResNet34 SAM
                       at 512 px), batch 16, on synthetic COCO-format images, for --train-seconds: images/s
                       and the trainer's data-wait / compute split (metrics.jsonl).

Every section stops cleanly when the overall --budget runs out (what it measured so far is kept) and is
skipped, with the reason, when too little time is left to start it. A cell that cannot run (a reference package
missing, no CUDA for CUDA graphs, out of memory) is recorded with why. The JSON is rewritten after every
sub-sweep, so even a killed run leaves what it had. The markdown table at the end goes into benchmarks/gpu.md.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: the working tree's swiftsam
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCHEMA = "swiftsam.gpu/1"
SECTIONS = ("nanosam_pipeline", "mobilesam_pipeline", "decoder", "efficientvit_reference", "train")
# seconds a section needs at least on a GPU (compiles included); a section with less time left is skipped
NEEDS_S = {"nanosam_pipeline": 75, "mobilesam_pipeline": 100, "decoder": 25, "efficientvit_reference": 35,
           "train": 45}
TEACHER_CONFIG = ROOT / "benchmarks" / "configs" / "swiftsam-teacher.yaml"


class TimeUp(BaseException):
    """The overall budget ran out (raised in the main thread; a BaseException, so no `except Exception` swallows it)."""


class Budget:
    """The run's time budget. ``arm`` starts a timer thread that, when the budget is spent, interrupts the main
    thread with ``_thread.interrupt_main(SIGALRM)``: Python calls the SIGALRM handler (raising TimeUp) at its next
    bytecode. No real signal is sent, so no native thread (OpenMP, TBB, CUDA, onnxruntime) has a system call
    interrupted under it: a real SIGALRM goes to any thread of the process, and one of them crashed the test run."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.monotonic()
        self._timer: threading.Timer | None = None
        self._previous = None

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def arm(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._ring)
        self._timer = threading.Timer(max(0.01, self.left()), _thread.interrupt_main, args=(signal.SIGALRM,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._previous is not None:
            signal.signal(signal.SIGALRM, self._previous)
            self._previous = None

    @staticmethod
    def _ring(signum, frame):
        raise TimeUp()


class Plan:
    """Sizes and settings of a full run or of a smoke run (tiny sizes, one timed call per cell)."""

    def __init__(self, smoke: bool, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.smoke, self.device = smoke, device
        self.batch = 2 if smoke else 32
        self.small_batch = 1 if smoke else 32  # mobilesam runs at 1024 px only: batch 1 when smoke-testing
        self.size = 128 if smoke else None  # None: each model's own input size (nanosam-r18: 1024)
        self.prompts = [1, 4] if smoke else [1, 64]
        # bf16 on a CPU without bf16 units is many times slower than fp32: the smoke run uses fp32
        self.low = "fp32" if smoke else "bf16"
        self.decoder_precisions = ["fp32"] if smoke else ["fp32", "bf16"]
        self.evit_precisions = ["fp32"] if smoke else ["fp32", "bf16"]
        self.evit_batches = [1] if smoke else [1, 32]
        self.warmup, self.iterations = (0, 1) if smoke else (3, 10)
        self.min_time_s = 0.0 if smoke else 1.5
        # torch.compile needs minutes and a C++ toolchain on a CPU: the smoke run leaves it out (recorded)
        self.compiled = not smoke
        self.cuda_graphs = cuda
        self.train_batch = 1 if smoke else 16
        self.train_size = 64 if smoke else 512
        self.train_workers = 1 if smoke else min(8, max(1, (os.cpu_count() or 2) - 2))
        self.train_images = 4 if smoke else 256
        # None: the recipe's own (bf16 autocast; 4 objects per image, 2 prompt rounds)
        self.train_amp, self.train_objects, self.train_rounds = ("none", 1, 1) if smoke else (None, None, None)


def machine(device: torch.device) -> dict:
    from swiftsam.bench.sweep import machine_info

    info = machine_info(device)
    info["cuda_available"] = torch.cuda.is_available()
    info["cuda"] = torch.version.cuda
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    for pkg in ("torchvision", "timm", "mobile_sam", "segment_anything", "efficientsam", "pycocotools"):
        try:
            mod = __import__(pkg)
            info[pkg] = getattr(mod, "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - a broken install is recorded, not fatal
            info[pkg] = f"not importable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return info


def machine_line(info: dict) -> str:
    what = info.get("gpu") or info.get("cpu") or platform.processor()
    return (f"{what}; torch {info['torch']}, CUDA {info.get('cuda')}, driver {info.get('driver', '-')}; "
            f"{info.get('cores')} CPU cores; Python {info['python']}")


def bench_command(cfg) -> str:
    """The `swiftsam bench` command line that measures the same cells."""
    parts = ["swiftsam bench", "--models", ",".join(cfg.models), "--engines", ",".join(cfg.engines),
             "--precisions", ",".join(cfg.precisions), "--batch-sizes", ",".join(map(str, cfg.batch_sizes)),
             "--stages", ",".join(cfg.stages), "--device", cfg.device, "--warmup", str(cfg.warmup),
             "--iterations", str(cfg.iterations), "--min-time", str(cfg.min_time_s)]
    if cfg.input_sizes != [None]:
        parts += ["--input-sizes", ",".join("native" if s is None else str(s) for s in cfg.input_sizes)]
    if "decoder" in cfg.stages:
        parts += ["--prompts", ",".join(map(str, cfg.prompts))]
    if cfg.compare_reference:
        parts.append("--compare-reference")
    if cfg.channels_last is not None:
        parts.append("--channels-last" if cfg.channels_last else "--no-channels-last")
    return " ".join(parts)


def sweep(section: dict, plan: Plan, native: bool = False, **kw) -> dict:
    """One `swiftsam bench` sub-sweep; its rows and skipped cells go into ``section`` (also when the budget
    runs out mid-sweep: the sweep's own file, rewritten after every cell, keeps what was measured)."""
    from swiftsam.bench import BenchConfig, run_bench

    cfg = BenchConfig(device=str(plan.device), warmup=plan.warmup, iterations=plan.iterations,
                      min_time_s=plan.min_time_s, input_sizes=[None if native else plan.size], **kw)
    section.setdefault("commands", []).append(bench_command(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.json"
        try:
            doc = run_bench(cfg, out=path, progress=False)
        except TimeUp:
            if path.exists():
                doc = json.loads(path.read_text())
                section["rows"] += doc["results"]
                section["skipped"] += doc["skipped"]
            raise
    section["rows"] += doc["results"]
    section["skipped"] += doc["skipped"]
    section.setdefault("speedups", []).extend(doc["speedups"])
    section.setdefault("best_vs_best", []).extend(doc["best_vs_best"])
    return doc


def find(rows: list[dict], **want) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _brief(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: row.get(k) for k in ("model", "implementation", "engine", "precision", "input_size", "stage",
                                    "batch_size", "prompts", "median_s", "min_s", "iterations", "throughput",
                                    "throughput_unit", "describe", "peak_memory_mb")}


# ---- sections ------------------------------------------------------------------------------------------


def pipeline_section(section: dict, plan: Plan, model: str, target: float) -> None:
    batch = plan.batch if model == "nanosam-r18" else plan.small_batch
    engines = (["torch-compile"] if plan.compiled else []) + ["torch"]
    if not plan.compiled:
        section["notes"].append("torch-compile left out (smoke run on a CPU)")
    for engine in engines:  # one sub-sweep per engine: the compiled one first, it is what the target is about
        sweep(section, plan, native=model != "nanosam-r18", models=[model], engines=[engine], precisions=[plan.low],
              batch_sizes=[batch], stages=["encoder", "pipeline"])
    rows = section["rows"]
    enc_c = find(rows, stage="encoder", engine="torch-compile", precision=plan.low)
    enc_e = find(rows, stage="encoder", engine="torch", precision=plan.low)
    pipes = [r for r in rows if r["stage"] == "pipeline"]
    best = max(pipes, key=lambda r: r["throughput"]) if pipes else None
    encoder = enc_c or enc_e
    section["summary"] = {
        "batch_size": batch, "precision": plan.low,
        "pipeline_img_s": best and best["throughput"], "pipeline": _brief(best),
        "encoder_compiled_img_s": enc_c and enc_c["throughput"],
        "encoder_eager_img_s": enc_e and enc_e["throughput"],
        "pipeline_over_encoder": (best["throughput"] / encoder["throughput"]) if best and encoder else None,
        "ratio_against": None if encoder is None else f"{encoder['engine']} {encoder['precision']} encoder",
        "target_img_s": target,
    }
    s = section["summary"]
    if s["pipeline_img_s"] is not None:
        share_ok = model != "nanosam-r18" or (s["pipeline_over_encoder"] or 0) >= 0.7
        s["met"] = s["pipeline_img_s"] >= target and share_ok


def decoder_agreement(name: str, plan: Plan) -> dict:
    """The CUDA-graph decoder (padded to prompt-count buckets, one graph each) against the eager one on the same
    features and prompts: max |difference| of every output, per prompt count and mask input. Without CUDA (a
    smoke run) the same comparison runs the bucketed decoder eagerly, which checks the padding alone."""
    from swiftsam.bench.sweep import _build_model
    from swiftsam.bench.workloads import example_boxes
    from swiftsam.engines import get_engine
    from swiftsam.engines.static_decoder import StaticShapeDecoder
    from swiftsam.modeling.features import ImageFeatures
    from swiftsam.prompts import PromptBatch

    model = _build_model(name, plan.size, plan.device, 0).eval()
    eager = get_engine("torch", model)
    if plan.cuda_graphs:
        other, what = get_engine("torch", model, cuda_graphs=True), "cuda_graphs"
    else:
        other, what = get_engine("torch", model), "bucketed eager decoder (no CUDA)"
        other._graphs = StaticShapeDecoder(lambda inputs, m: other._decoder(*inputs, mask_prompts=m))
    g = torch.Generator().manual_seed(0)
    feats = ImageFeatures.of([torch.randn(1, f.channels, f.size, f.size, generator=g).to(plan.device)
                              for f in model.contract.features])
    diffs = {}
    for n, masks in ((1, False), (3, True), (6, False)) if plan.smoke else ((1, False), (3, True), (64, False),
                                                                             (70, False), (64, True)):
        mask = torch.randn(n, 1, *model.contract.mask_input_size, generator=g).numpy() if masks else None
        batch = PromptBatch.from_pixels(model.contract, (480, 640), boxes=example_boxes(n, (480, 640), seed=n),
                                        mask_input=mask).to(plan.device)
        with torch.inference_mode():
            want, got = eager.decode(feats, *batch.tensors()), other.decode(feats, *batch.tensors())
        diffs[f"{n} box(es){' + mask input' if masks else ''}"] = max(
            float((a - b).abs().max()) for a, b in zip(got, want))
    graphs, failed = getattr(other._graphs.run, "graphs", None), getattr(other._graphs.run, "failed", {})
    return {"what": what, "max_abs_diff": diffs, "graphs_captured": None if graphs is None else len(graphs),
            "capture_failed": {str(k[1:]): why for k, why in failed.items()}}


def decoder_section(section: dict, plan: Plan) -> None:
    section["agreement"] = {name: decoder_agreement(name, plan) for name in ("nanosam-r18", "sam2.1-hiera-tiny")}
    engines = ["torch"] + (["torch-cudagraphs"] if plan.cuda_graphs else [])
    if not plan.cuda_graphs:
        section["notes"].append("torch-cudagraphs needs CUDA: not run")
    for engine in engines:
        sweep(section, plan, models=["nanosam-r18"], engines=[engine], precisions=plan.decoder_precisions,
              stages=["decoder"], prompts=plan.prompts)
    out = {}
    for r in section["rows"]:
        out[f"{r['engine']} {r['precision']} {r['prompts']} box(es) ms"] = 1000 * r["median_s"]
    best1 = min((r["median_s"] for r in section["rows"] if r["prompts"] == 1), default=None)
    best64 = min((r["median_s"] for r in section["rows"] if r["prompts"] == 64), default=None)
    section["summary"] = {"ms": out, "best_1_box_ms": best1 and 1000 * best1,
                          "best_64_boxes_ms": best64 and 1000 * best64,
                          "target_ms": {"1": 1.0, "64": 5.0}}
    if best1 is not None and best64 is not None:
        section["summary"]["met"] = 1000 * best1 <= 1.0 and 1000 * best64 <= 5.0


def efficientvit_section(section: dict, plan: Plan) -> None:
    batches, precisions = plan.evit_batches, plan.evit_precisions
    # the reference runs at the model's own input size (512) only; channels_last first, with the reference, then
    # NCHW (the measured default on CUDA for bf16: engines.measured.CHANNELS_LAST)
    sweep(section, plan, native=True, models=["efficientvit-sam-l0"], engines=["torch"], precisions=precisions,
          batch_sizes=batches, stages=["encoder"], compare_reference=True, channels_last=True)
    section["rows"] = [{**r, "channels_last": True} if r["implementation"] == "swiftsam" else r
                       for r in section["rows"]]
    before = len(section["rows"])
    sweep(section, plan, native=True, models=["efficientvit-sam-l0"], engines=["torch"], precisions=precisions,
          batch_sizes=batches, stages=["encoder"], channels_last=False)
    for r in section["rows"][before:]:
        r["channels_last"] = False
    rows = section["rows"]
    summary = {}
    for b in batches:
        for p in precisions:
            ref = find(rows, implementation="reference", precision=p, batch_size=b)
            for cl in (True, False):
                ours = find(rows, implementation="swiftsam", precision=p, batch_size=b, channels_last=cl)
                key = f"batch {b} {p} {'channels_last' if cl else 'contiguous'}"
                summary[key] = {"swiftsam_img_s": ours and ours["throughput"],
                                "reference_img_s": ref and ref["throughput"],
                                "speedup_same_precision": ref["median_s"] / ours["median_s"] if ref and ours else None}
    why = [s["reason"] for s in section["skipped"] if s["implementation"] == "reference"]
    if why:
        summary["reference_missing"] = why[0]
    if any(isinstance(v, dict) and v["speedup_same_precision"] for v in summary.values()):
        best = {}  # per batch and precision, the better memory format: it must at least match the reference
        for k, v in summary.items():
            if isinstance(v, dict) and v["speedup_same_precision"]:
                kk = k.rsplit(" ", 1)[0]
                best[kk] = max(best.get(kk, 0.0), v["speedup_same_precision"])
        summary["best_speedup_per_cell"] = best
        summary["met"] = len(best) == len(batches) * len(precisions) and all(v >= 1.0 for v in best.values())
    section["summary"] = summary


def synthetic_coco(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` 640x480 JPEGs of noise with 4 filled rectangles each, and their COCO instances file (polygons)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        im = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, 560)), int(rng.integers(0, 400))
            w, h = int(rng.integers(20, 640 - x0)), int(rng.integers(20, 480 - y0))
            draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": float(w * h),
                         "bbox": [x0, y0, w, h], "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]]})
        name = f"{i:06d}.jpg"
        im.save(images_dir / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "height": 480, "width": 640})
    ann_path = folder / "instances.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": 1, "name": "thing"}]}))
    return images_dir, ann_path


def train_section(section: dict, plan: Plan, seconds: float, budget: Budget) -> None:
    """The teacher recipe on synthetic images for ``seconds`` (less when the budget says so)."""
    from swiftsam.train import distributed as ddp
    from swiftsam.train.config import load_config
    from swiftsam.train.trainer import Trainer

    class Stop(Exception):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        images, ann = synthetic_coco(Path(tmp) / "data", plan.train_images)
        log_every = 1 if plan.smoke else 5
        over = {"images": str(images), "annotations": str(ann), "out": str(Path(tmp) / "run"), "steps": 10**6,
                "batch_size": plan.train_batch, "workers": plan.train_workers, "device": str(plan.device),
                "log_every": log_every, "checkpoint_every": 10**6, "tensorboard": False,
                "student": {"name": "nanosam-r34", "checkpoint": "random", "kwargs": {"input_size": plan.train_size}},
                "amp": plan.train_amp, "objects_per_image": plan.train_objects, "prompt_rounds": plan.train_rounds}
        config = load_config(TEACHER_CONFIG, over)
        config.validate()
        section["config"] = {"file": str(TEACHER_CONFIG.relative_to(ROOT)),
                             **{k: v for k, v in config.as_dict().items() if k not in ("images", "annotations", "out")},
                             "data": f"{plan.train_images} synthetic 640x480 JPEGs, 4 boxes each"}
        section["commands"] = [f"swiftsam train {TEACHER_CONFIG.relative_to(ROOT)} (overrides: {json.dumps(over)})"]
        t_run = min(seconds, max(1.0, budget.left() - 10))
        stop_at: list[float] = []

        class Timed(Trainer):
            def step(self, step, batches):
                if not stop_at:  # the clock starts at the first step (the model is built, the workers started)
                    stop_at.append(time.perf_counter() + t_run)
                elif time.perf_counter() > stop_at[0] and step % log_every == 0:
                    raise Stop()
                return super().step(step, batches)

        t0 = time.perf_counter()
        try:
            Timed(config, ddp.Dist(), progress=False).run()
        except Stop:
            pass
        finally:
            metrics = Path(tmp) / "run" / "metrics.jsonl"
            lines = [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []
            section["rows"] = [r for r in lines if r["kind"] == "train"]
            section["wall_s"] = time.perf_counter() - t0
    rows = section["rows"]
    steady = rows[1:] or rows  # the first interval holds the workers' start and the first (slow) steps
    if not steady:
        section["why"] = "no logged interval (the run stopped before its first log)"
        return
    images = sum(r["interval_images_per_s"] * r["interval_s"] for r in steady)
    wall = sum(r["interval_s"] for r in steady)
    wait, compute = sum(r["data_wait_s"] for r in steady), sum(r["compute_s"] for r in steady)
    section["summary"] = {"img_s": images / wall, "compute_only_img_s": images / max(1e-9, compute),
                          "data_wait_fraction": wait / max(1e-9, wait + compute), "steps": rows[-1]["step"],
                          "intervals_used": len(steady), "target_img_s": 600.0}
    section["summary"]["met"] = section["summary"]["img_s"] >= 600.0


# ---- driver --------------------------------------------------------------------------------------------


def write(doc: dict, out: Path) -> None:
    from swiftsam.utils import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=str))


def run(args: argparse.Namespace) -> dict:
    from swiftsam.runtime import resolve_device

    device = resolve_device(args.device)
    plan = Plan(args.smoke, device)
    only = args.only or list(SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        raise SystemExit(f"--only: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    budget = Budget(args.budget)
    doc = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "smoke": args.smoke, "budget_s": args.budget,
           "device": str(device), "machine": machine(device),
           "settings": {k: v for k, v in vars(plan).items() if k != "device"}, "sections": {}}
    doc["machine_line"] = machine_line(doc["machine"])
    out = Path(args.out)
    write(doc, out)
    for name in SECTIONS:
        section = {"status": "pending", "rows": [], "skipped": [], "notes": []}
        doc["sections"][name] = section
        if name not in only:
            section.update(status="skipped", why="not in --only")
            continue
        need = 1 if args.smoke else NEEDS_S[name]
        if budget.left() < need:
            section.update(status="skipped",
                           why=f"time budget: {budget.left():.0f} s left, the section needs ~{need} s")
            write(doc, out)
            continue
        t = time.monotonic()
        budget.arm()
        try:
            if name == "nanosam_pipeline":
                pipeline_section(section, plan, "nanosam-r18", 2000.0)
            elif name == "mobilesam_pipeline":
                pipeline_section(section, plan, "mobilesam", 700.0)
            elif name == "decoder":
                decoder_section(section, plan)
            elif name == "efficientvit_reference":
                efficientvit_section(section, plan)
            else:
                train_section(section, plan, args.train_seconds, budget)
            section["status"] = "done"
        except TimeUp:
            section.update(status="partial", why=f"the overall time budget ({args.budget:.0f} s) ran out")
        except Exception as e:  # noqa: BLE001 - one section failing must not lose the others
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            section.update(status="failed", why=f"{type(e).__name__}: {first}")
        finally:
            budget.disarm()
        section["seconds"] = round(time.monotonic() - t, 1)
        if device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        doc["elapsed_s"] = round(budget.elapsed(), 1)
        write(doc, out)
        print(f"[{budget.elapsed():6.1f} s] {name}: {section['status']}"
              + (f" ({section['why']})" if section.get("why") else ""), file=sys.stderr, flush=True)
    doc["elapsed_s"] = round(budget.elapsed(), 1)
    write(doc, out)
    return doc


def _f(v, fmt="{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(doc: dict) -> str:
    """The table for benchmarks/gpu.md: one line per target, with the cells' configurations."""
    s = doc["sections"]
    lines = [f"Machine: {doc['machine_line']}", "", f"Command: `{doc['command']}` ({doc.get('elapsed_s')} s"
             + (", SMOKE run: tiny sizes, not a measurement" if doc.get("smoke") else "") + ")", "",
             "| target | measured | configuration | met |", "|---|---:|---|---|"]

    def met(sec):
        m = sec.get("summary", {}).get("met")
        return "-" if m is None else ("yes" if m else "no")

    def why(sec):
        return f"{sec['status']}: {sec.get('why', '')}".strip(": ") if sec["status"] != "done" else ""

    for name, label in (("nanosam_pipeline", "nanosam-r18 pipeline >= 2,000 img/s, >= 70% of encoder"),
                        ("mobilesam_pipeline", "mobilesam pipeline >= 700 img/s")):
        sec = s.get(name, {})
        sm = sec.get("summary", {})
        p = sm.get("pipeline") or {}
        cfg = (f"batch {sm.get('batch_size')}, {p.get('engine')} {p.get('precision')}; encoder compiled "
               f"{_f(sm.get('encoder_compiled_img_s'))} / eager {_f(sm.get('encoder_eager_img_s'))} img/s"
               if sm else why(sec))
        ratio = sm.get("pipeline_over_encoder")
        lines.append(f"| {label} | {_f(sm.get('pipeline_img_s'))} img/s"
                     + (f" ({ratio:.0%} of {sm.get('ratio_against')})" if ratio else "") + f" | {cfg} | {met(sec)} |")
    sec = s.get("efficientvit_reference", {})
    sm = sec.get("summary", {})
    cells = [f"{k}: {v['speedup_same_precision']:.2f}x" for k, v in sm.items()
             if isinstance(v, dict) and "speedup_same_precision" in v and v["speedup_same_precision"]]
    lines.append(f"| efficientvit-sam-l0 encoder >= reference (same precision) | "
                 f"{'; '.join(cells) if cells else (sm.get('reference_missing') or why(sec) or '-')} | "
                 f"batch {' and '.join(map(str, doc['settings']['evit_batches']))}, torch engine | {met(sec)} |")
    sec = s.get("decoder", {})
    sm = sec.get("summary", {})
    ms = "; ".join(f"{k.replace(' ms', '')} {v:.2f} ms" for k, v in sm.get("ms", {}).items())
    lines.append(f"| decoder 1 box <= 1 ms, 64 boxes <= 5 ms | {ms or why(sec) or '-'} | nanosam-r18, "
                 f"torch engine (decoder_dtype = dtype) | {met(sec)} |")
    for name, a in sec.get("agreement", {}).items():
        worst = max(a["max_abs_diff"].values(), default=None)
        lines.append(f"| {name} decoder, {a['what']} vs eager | max abs diff {_f(worst, '{:.1e}')} over "
                     f"{', '.join(a['max_abs_diff'])} | {a['graphs_captured'] or 0} graphs"
                     + (f", capture failed: {'; '.join(a['capture_failed'].values())[:300]}" if a.get("capture_failed") else "")
                     + " | - |")
    sec = s.get("train", {})
    sm = sec.get("summary", {})
    c = sec.get("config", {})
    lines.append(f"| train-masks teacher recipe >= 600 img/s | "
                 + (f"{_f(sm.get('img_s'))} img/s (compute only {_f(sm.get('compute_only_img_s'))}; "
                    f"{sm['data_wait_fraction']:.0%} waiting for data)" if sm else (why(sec) or sec.get("why", "-")))
                 + (f" | batch {c.get('batch_size')}, workers {c.get('workers')}, amp {c.get('amp')}, "
                    f"{c.get('data', '')}" if c else " | -") + f" | {met(sec)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=420.0,
                   help="overall seconds; sections stop cleanly when it runs out")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.json"))
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N, cpu")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, one timed call per cell (tests the script on a CPU)")
    p.add_argument("--only", type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
                   help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--train-seconds", type=float, default=30.0, help="how long the train section trains")
    args = p.parse_args(argv)
    if args.smoke and args.train_seconds == 30.0:
        args.train_seconds = 2.0
    doc = run(args)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
