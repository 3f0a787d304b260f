"""How close each image encoder runs to this CPU's arithmetic peak, and the most any implementation could gain.

    python benchmarks/cpu_roofline.py --out benchmarks/cpu_roofline.json

Four measurements:
1. **Peak**: the best rate (FLOP/s, a multiply-add counted as two) this machine reaches on large dense products,
   per precision: torch ``mm`` (1024-4096 squares), OpenVINO ``MatMul`` and 3x3 ``Convolution`` (the encoders'
   shapes), at ``--threads``, before and after the encoders. The peak used below is the best rate seen in the run,
   those products' or an encoder's own: no implementation of an encoder runs its products faster than the machine
   runs a large product alone.
2. **Work**: each encoder's FLOPs, counted by ``torch.utils.flop_counter`` on swiftsam's encoder at the model's
   input size (attention through the math path, so its two products are counted; element-wise work, norms and
   softmax are not counted, which only raises the ceilings below). swiftsam's encoders are the authors'
   architectures (parity-tested within 1e-4), so the count is the authors' as well, except where we fold two
   products into one (SAM 2's stride-4 / 8 projections: ours is slightly less).
3. **Ours**: the OpenVINO encoder (swiftsam's fastest CPU engine for every family) at ``--threads``, median of
   ``--iterations`` after one warm-up call.
4. **Theirs**: the authors' encoder and pipeline (``benchmarks/openvino_cpu.py``, one process per implementation
   as in ``benchmarks/engines.md``: as shipped, and with swiftsam's malloc setting), in the same run.

From these: the floor, FLOPs / peak, the time under which no implementation with the same arithmetic can run; the
share of the peak we reach; the share of the peak an encoder would need to be ``--target`` x theirs; and the
**ceiling ratio**, the authors' time divided by the floor: the largest speed-up over their code that any
implementation doing the same arithmetic could show on this machine (for the pipeline, the encoder's floor stands
for the whole pipeline's, so its ceiling is generous). Where it is under a target (issue 25 asks >= 2x), the
target cannot be met by a faster implementation, only by less arithmetic (lower precision, INT8, a smaller model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swiftsam.bench.measure import Timing, measure  # noqa: E402
from swiftsam.bench.sweep import _build_model, machine_info  # noqa: E402
from swiftsam.engines import get_engine  # noqa: E402
from swiftsam.errors import SwiftSamError  # noqa: E402
from swiftsam.utils import atomic_path  # noqa: E402

CPU = torch.device("cpu")
PRECISIONS = {"fp32": ("f32", torch.float32), "bf16": ("bf16", torch.bfloat16)}


def _best(fn, repeats: int = 8) -> float:
    """The fastest of ``repeats`` timed calls after one untimed one, in seconds."""
    return measure(fn, CPU, warmup=1, iterations=repeats).min_s


def peak_rates(precision: str, threads: int) -> dict[str, float]:
    """GFLOP/s of large products on this machine, by kernel."""
    import openvino as ov
    from openvino import opset13 as ops

    ov_precision, dtype = PRECISIONS[precision]
    torch.set_num_threads(threads)
    rates = {}
    gen = torch.Generator().manual_seed(0)
    for n in (1024, 2048, 4096):
        a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
        rates[f"torch mm {n}"] = 2 * n ** 3 / _best(lambda a=a, b=b: a @ b) / 1e9
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": ov_precision, "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY"}
    rng = np.random.default_rng(0)

    def rate(graph, param_shape, flops):
        request = core.compile_model(graph, "CPU", config).create_infer_request()
        x = rng.standard_normal(param_shape, dtype=np.float32)
        return flops / _best(lambda: request.infer({0: x})) / 1e9

    for n in (2048, 4096):
        p = ops.parameter([n, n], np.float32)
        w = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
        rates[f"openvino matmul {n}"] = rate(ov.Model([ops.matmul(p, w, False, False)], [p]), (n, n), 2 * n ** 3)
    for ci, co, hw in ((256, 1024, 64), (256, 256, 64), (128, 512, 128)):
        p = ops.parameter([1, ci, hw, hw], np.float32)
        w = ops.constant(rng.standard_normal((co, ci, 3, 3), dtype=np.float32) * 0.01)
        conv = ops.convolution(p, w, [1, 1], [1, 1], [1, 1], [1, 1])
        rates[f"openvino conv3x3 {ci}->{co} at {hw}x{hw}"] = rate(ov.Model([conv], [p]), (1, ci, hw, hw),
                                                                  2 * hw * hw * ci * co * 9)
    return rates


def encoder_flops(model) -> dict[str, float]:
    """FLOPs of one image through ``model.image_stage()``, total and by operator."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    s = model.spec.input_size
    x = torch.zeros(1, 3, s, s)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model.image_stage()(x)
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops(), "by_op": by_op}


def our_encoder(model, precision: str, threads: int, iterations: int) -> Timing:
    engine = get_engine("openvino", model, precision=precision, threads=threads)
    s = model.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    return measure(lambda: engine.encode(x), CPU, warmup=1, iterations=iterations)


def reference_ms(model: str, precision: str, threads: int, tuned: bool) -> dict[str, float | None]:
    """The authors' encoder and pipeline (median wall ms), measured by ``openvino_cpu.py`` in a process of its own
    (their code in the same process as swiftsam's engines runs faster: engines.md says why). None for a stage that
    fails (the authors' EfficientViT-SAM predictor under bf16 autocast) or a family without a reference."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ref.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "openvino_cpu.py"), "--models", model, "--impls",
               f"reference {precision}", "--stages", "encoder,pipeline", "--warmup", "1", "--iterations", "3",
               "--threads", str(threads), "--out", str(out)] + (["--malloc-tuning"] if tuned else [])
        run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if run.returncode != 0:  # recorded; the other cells go on
            lines = run.stderr.strip().splitlines()
            return {"encoder": None, "pipeline": None, "why": lines[-1] if lines else f"exit {run.returncode}"}
        doc = json.loads(out.read_text())["models"][model]
    results = doc["results"]
    found = {stage: (results[f"reference {precision}|{stage}"]["wall_median_s"] * 1e3
                     if f"reference {precision}|{stage}" in results else None) for stage in ("encoder", "pipeline")}
    why = {**doc.get("skipped", {}), **doc.get("failed", {})}  # e.g. their predictor under bf16 autocast
    return {**found, "why": why or None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilesam,efficientvit-sam-l0,efficientvit-sam-xl0,sam2.1-hiera-tiny,"
                                       "sam-vit-b")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--target", type=float, default=2.0, help="the speed-up over the authors' code to test (issue 25: 2)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    precisions = args.precisions.split(",")
    out = {"machine": machine_info(torch.device("cpu")), "config": vars(args), "peak_gflops": {}, "models": {}}
    with open("/proc/loadavg") as f:
        out["loadavg_start"] = f.read().split()[:3]
    kernels: dict[str, dict[str, float]] = {p: {} for p in precisions}

    def measure_peaks(when: str) -> None:
        for precision in precisions:
            rates = peak_rates(precision, args.threads)
            kernels[precision].update({f"{k} ({when})": v for k, v in rates.items()})
            print(f"peak {precision} ({when}): {max(rates.values()):.0f} GFLOP/s "
                  f"({', '.join(f'{k} {v:.0f}' for k, v in rates.items())})", flush=True)

    measure_peaks("before")
    for name in args.models.split(","):
        torch.set_num_threads(args.threads)
        model = _build_model(name, None, torch.device("cpu"), 0).eval()
        flops = encoder_flops(model)
        entry = out["models"][name] = {"flops": flops, "precisions": {}}
        for precision in precisions:
            try:
                timing = our_encoder(model, precision, args.threads, args.iterations)
            except SwiftSamError as e:  # e.g. bf16 on a CPU without BF16 kernels
                entry["skipped"] = {**entry.get("skipped", {}), precision: str(e)}
                print(f"{name} {precision}: skipped ({e})", flush=True)
                continue
            shipped = reference_ms(name, precision, args.threads, tuned=False)
            tuned = reference_ms(name, precision, args.threads, tuned=True)
            entry["precisions"][precision] = {
                "ours_ms": timing.median_s * 1e3, "ours_min_ms": timing.min_s * 1e3,
                "reference_ms": shipped["encoder"], "reference_pipeline_ms": shipped["pipeline"],
                "reference_why": shipped["why"], "reference_malloc_ms": tuned["encoder"]}
            print(f"{name} {precision}: {entry['precisions'][precision]}", flush=True)
        del model
    measure_peaks("after")
    with open("/proc/loadavg") as f:
        out["loadavg_end"] = f.read().split()[:3]

    # the peak: the best rate seen in this run, on a large product before or after the encoders, or by an encoder
    # itself (the VM's clock varies from minute to minute, so a kernel's rate alone can come out under an encoder's)
    for precision in precisions:
        rates = dict(kernels[precision])
        for name, entry in out["models"].items():
            if precision in entry["precisions"]:
                rates[f"encoder {name}"] = entry["flops"]["total"] / 1e9 / entry["precisions"][precision]["ours_ms"] * 1e3
        out["peak_gflops"][precision] = {"rates": rates, "peak": max(rates.values()),
                                         "best": max(rates, key=rates.get)}

    def f(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)

    print(" | ".join(("model", "precision", "GFLOP", "ours ms", "GFLOP/s", "% peak", "floor ms", "ref ms", "x ref",
                      "ceiling x ref", f"% peak for {args.target:g}x", "ref+malloc ms", "ceiling x ref+malloc",
                      "ref pipeline ms", "ceiling x ref pipeline")))
    for name, entry in out["models"].items():
        gflop = entry["flops"]["total"] / 1e9
        for precision, row in entry["precisions"].items():
            peak = out["peak_gflops"][precision]["peak"]
            floor = gflop / peak * 1e3
            ours, ref, ref_pipe, ref_tuned = (row[k] for k in ("ours_ms", "reference_ms", "reference_pipeline_ms",
                                                                "reference_malloc_ms"))
            row.update({
                "gflops": gflop / ours * 1e3, "share_of_peak": gflop / ours * 1e3 / peak, "floor_ms": floor,
                "x_reference": ref / ours if ref else None, "ceiling_x_reference": ref / floor if ref else None,
                # the share of the peak an encoder would have to run at to be --target x the authors'
                "share_of_peak_for_target": args.target * floor / ref if ref else None,
                "ceiling_x_reference_malloc": ref_tuned / floor if ref_tuned else None,
                # the pipeline's floor is at least the encoder's: a generous ceiling
                "ceiling_x_reference_pipeline": ref_pipe / floor if ref_pipe else None})
            print(" | ".join([name, precision, f"{gflop:.1f}", f(ours), f(row["gflops"]),
                              f(100 * row["share_of_peak"]), f(floor), f(ref), f(row["x_reference"], "{:.2f}"),
                              f(row["ceiling_x_reference"], "{:.2f}"),
                              f(row["share_of_peak_for_target"] and 100 * row["share_of_peak_for_target"]),
                              f(ref_tuned), f(row["ceiling_x_reference_malloc"], "{:.2f}"), f(ref_pipe),
                              f(row["ceiling_x_reference_pipeline"], "{:.2f}")]), flush=True)
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
