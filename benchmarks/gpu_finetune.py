"""Time-boxed GPU fine-tune of the default model, and moving its weights through size-limited transfers.

    python benchmarks/gpu_finetune.py run CONFIG OUT DEADLINE_S MAX_SAMPLES [KEY=VALUE ...]
    python benchmarks/gpu_finetune.py split MODEL.pt FOLDER      # fp16 parts of <= 14 MiB: part0.pt, part1.pt, ...
    python benchmarks/gpu_finetune.py join FOLDER MODEL.pt       # the parts back into one fp32 state dict

`run` trains CONFIG (a train-masks config, e.g. benchmarks/configs/swiftsam-r18-gpu.yaml) for as many steps
as fit in DEADLINE_S seconds (at most MAX_SAMPLES images): the first PROBE steps (env PROBE, default 40)
measure the speed, then the run resumes from their checkpoint with the computed length. The probe's steps
are warm-up steps (the config's warmup_steps must exceed PROBE), whose learning rate does not depend on
`steps`, and the data order depends on the step alone, so the result equals a run started with that length.
KEY=VALUE (YAML values) override the config. benchmarks/gpu_finetune.sh wraps it for the GPU machine.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

PART_LIMIT = 14 * 2**20


def run(cfg_path: str, out: str, deadline: float, max_samples: int, overrides: list[str]) -> None:
    import yaml

    from swiftsam.train.config import load_config
    from swiftsam.train.trainer import Interrupted, train

    t_start = time.time()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    over = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in overrides)}
    probe = int(os.environ.get("PROBE", 40))
    half = max(1, probe // 2)
    c = load_config(cfg_path, {**over, "out": out, "checkpoint_every": probe, "log_every": half})
    if c.warmup_steps <= probe:
        raise SystemExit(f"warmup_steps ({c.warmup_steps}) must exceed the probe's {probe} steps")
    t = time.time()
    try:
        train(c, progress=False, stop_after=probe)
    except Interrupted:
        pass
    t_probe = time.time() - t
    rows = [json.loads(ln) for ln in Path(out, "metrics.jsonl").read_text().splitlines()]
    tr = {r["step"]: r for r in rows if r["kind"] == "train"}
    b = c.batch_size
    t_half, t_all = half * b / tr[half]["images_per_s"], probe * b / tr[probe]["images_per_s"]
    rate = (probe - half) * b / (t_all - t_half)  # steady images/s over the probe's second half
    overhead = t_probe - t_all  # model load, device start, the first evaluation, a checkpoint
    reserve = min(150.0, 3 * overhead)  # two more evaluations, the last one, the final save
    left = deadline - (time.time() - t_start) - reserve
    steps = max(probe + 1, min(probe + int(left * rate / b), max_samples // b))
    print(f"PROBE: steps 1-{half} {t_half:.1f} s, steps {half + 1}-{probe} {t_all - t_half:.1f} s -> {rate:.1f} img/s "
          f"steady; overhead {overhead:.1f} s, reserve {reserve:.0f} s, {left:.0f} s left -> {steps} steps "
          f"(config {c.steps}, cap {max_samples // b})", flush=True)
    every = max(10, -(-steps // 3 // 10) * 10)  # two evaluations during the run, one at its end
    c2 = load_config(cfg_path, {**over, "out": out, "steps": steps, "eval_every": every})
    t = time.time()
    info = train(c2, progress=False)
    print(f"MAIN: {steps - probe} steps in {time.time() - t:.1f} s; total {time.time() - t_start:.1f} s", flush=True)
    print(json.dumps({k: info.get(k) for k in ("eval_at_start", "eval_at_end", "final_loss", "device", "torch")}))


def split(model: str, folder: str) -> None:
    state = torch.load(model, map_location="cpu", weights_only=True)
    if isinstance(state.get("model"), dict):  # swiftsam's {"model": state dict, "swiftsam": meta}
        print("meta:", state.get("swiftsam"))
        state = state["model"]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    parts, cur, size = [], {}, 0
    for k, v in state.items():
        v = (v.half() if v.is_floating_point() else v).contiguous().clone()
        n = v.numel() * v.element_size()
        if cur and size + n > PART_LIMIT:
            parts.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    parts.append(cur)
    for i, p in enumerate(parts):
        torch.save(p, out / f"part{i}.pt")
        print(out / f"part{i}.pt", f"{(out / f'part{i}.pt').stat().st_size / 2**20:.1f} MiB")


def join(folder: str, model: str) -> None:
    state: dict[str, torch.Tensor] = {}
    for p in sorted(Path(folder).glob("part*.pt"), key=lambda p: int(p.stem[4:])):
        state.update(torch.load(p, map_location="cpu", weights_only=True))
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, model)
    print(len(state), "tensors ->", model)


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "run" and len(args) >= 4:
        run(args[0], args[1], float(args[2]), int(args[3]), args[4:])
    elif cmd == "split" and len(args) == 2:
        split(*args)
    elif cmd == "join" and len(args) == 2:
        join(*args)
    else:
        raise SystemExit(__doc__)
