"""The torch engine's encoder with and without channels_last, per family and precision, on this machine: the
measurements behind ``engines.measured.CHANNELS_LAST`` (the torch engine's default memory format per device and family).
Random weights (seed 0), batch 1, each cell in a process of its own, the two layouts alternating (A B B A ...).

    python benchmarks/channels_last.py --models mobilesam,efficientvit-sam-l0,nanosam-r18,sam2.1-hiera-tiny,swiftsam-r18 \\
        --dtypes fp32,bf16 --rounds 2 --calls 5 --out benchmarks/channels_last.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cell(model: str, dtype: str, channels_last: bool, calls: int, threads: int, device: str) -> float:
    """Median seconds of one encoder call, in this process."""
    sys.path.insert(0, str(ROOT))
    import torch

    import tests.conftest  # noqa: F401  (torchvision / timm stand-ins the zoo's builders may import)
    from swiftsam.bench.sweep import _build_model
    from swiftsam.engines import get_engine

    torch.set_num_threads(threads)
    m = _build_model(model, None, torch.device(device), 0).eval()
    s = m.spec.input_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
    engine = get_engine("torch", m, dtype=dtype, channels_last=channels_last)
    times = []
    for i in range(calls + 1):  # the first call warms up
        t = time.perf_counter()
        engine.encode(x)
        if device != "cpu":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilesam,efficientvit-sam-l0,nanosam-r18,sam2.1-hiera-tiny,swiftsam-r18")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out")
    p.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)  # model dtype channels_last: run one cell, print s
    a = p.parse_args()
    if a.cell:
        print(cell(a.cell[0], a.cell[1], a.cell[2] == "1", a.calls, a.threads, a.device))
        return
    sys.path.insert(0, str(ROOT))
    import torch

    from swiftsam.bench.sweep import machine_info

    doc = {"machine": machine_info(torch.device(a.device)), "command": " ".join(["python", *sys.argv]), "cells": []}
    for model in a.models.split(","):
        for dtype in a.dtypes.split(","):
            got = {False: [], True: []}
            for r in range(a.rounds):
                for cl in ((False, True) if r % 2 == 0 else (True, False)):
                    out = subprocess.run([sys.executable, __file__, "--cell", model, dtype, str(int(cl)), "--calls",
                                          str(a.calls), "--threads", str(a.threads), "--device", a.device],
                                         capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(f"{model} {dtype} channels_last={cl} failed:\n{out.stderr[-2000:]}")
                    got[cl].append(float(out.stdout.strip().splitlines()[-1]))
            row = {"model": model, "dtype": dtype, "nchw_ms": [1e3 * v for v in got[False]],
                   "channels_last_ms": [1e3 * v for v in got[True]],
                   "speedup": min(got[False]) / min(got[True])}
            doc["cells"].append(row)
            print(f"{model:22s} {dtype}  NCHW {min(got[False]) * 1e3:8.1f} ms  channels_last "
                  f"{min(got[True]) * 1e3:8.1f} ms  x{row['speedup']:.2f}", flush=True)
            if a.out:
                Path(a.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
