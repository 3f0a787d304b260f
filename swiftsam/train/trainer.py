"""The trainer every recipe shares: AMP, gradient accumulation, LR schedule, atomic checkpoints with
exact resume, data parallelism under torchrun, metrics (JSON lines, TensorBoard), progress, periodic
evaluation, and the final zoo-loadable checkpoint with its model card.

Output folder::

    OUT/config.json          the settings (a resumed run must use the same ones)
    OUT/checkpoints/last.pt  student, optimizer, scheduler, scaler, RNG state, step (every N steps)
    OUT/metrics.jsonl        one line per logged step and per evaluation
    OUT/tb/                  TensorBoard scalars (when tensorboard is installed)
    OUT/model.pt             the student's state dict, with its zoo name, input size and box mask prior:
                             swiftsam.load(STUDENT, checkpoint=OUT/model.pt)
    OUT/model_card.json, OUT/MODEL_CARD.md
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..utils import atomic_path, save_torch_atomic
from ..zoo.checkpoint import save_checkpoint
from . import distributed as ddp
from .config import TrainConfig
from .data import StepSampler, collate, seed_everything
from .evaluate import evaluate_boxes
from .recipes import make_recipe

log = logging.getLogger("swiftsam.train")

# settings a resumed run may change: they do not affect the weights
FREE_TO_CHANGE = {"eval_every", "eval_images", "log_every", "checkpoint_every", "workers", "tensorboard",
                  "val_images", "val_annotations"}
# settings a resumed run may change that reshape the rest of the run: the learning-rate schedule is recomputed
# for the new length (a run can be shortened or extended); the change is logged
RESCHEDULES = {"steps"}


class Interrupted(Exception):
    """Raised by ``train(stop_after=k)`` right after step k: a stand-in for a kill, used by tests."""


def _device(config: TrainConfig, d: ddp.Dist) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(config.device)
    except RuntimeError:
        raise InputError(f"device {config.device!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {config.device}: this torch sees no CUDA device; use device: cpu.")
    if dev.type == "cuda" and dev.index is None:  # torch.cuda.set_device needs an index: this process's GPU
        dev = torch.device("cuda", d.local_rank)
    return dev


def _autocast_factory(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))

    return factor


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_same_run(out: Path, config: TrainConfig) -> None:
    path = out / "config.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())
    now = config.as_dict()
    free = FREE_TO_CHANGE | RESCHEDULES
    # a setting added to swiftsam after the run started was, in effect, at its default
    defaults = TrainConfig.defaults()
    before = {**{k: v for k, v in defaults.items() if k not in before}, **before}
    diff = sorted(k for k in set(before) | set(now) if k not in free and before.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in diff[:4])
        raise InputError(f"{out} holds a run with other settings ({shown}); resume with the same settings, "
                         f"or choose another out folder.")
    for k in sorted(RESCHEDULES):
        if before.get(k) != now.get(k):
            log.warning("resuming %s with %s %s -> %s: the learning-rate schedule is recomputed for the new length",
                        out, k, before.get(k), now.get(k))


class Metrics:
    """metrics.jsonl (rank 0) and TensorBoard scalars when available."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.path, self.enabled = out / "metrics.jsonl", enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():  # drop what a resumed run will redo
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1)
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only", self.path)

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{kind}/{k}", v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_card(out: Path, config: TrainConfig, info: dict) -> None:
    card = {"recipe": config.recipe, "student": {"name": config.student.name, "kwargs": config.student.kwargs},
            "teacher": None if config.teacher is None else {"name": config.teacher.name,
                                                            "checkpoint": config.teacher.checkpoint},
            "data": {"images": config.images, "annotations": config.annotations, **info.pop("data")},
            "training": {k: getattr(config, k) for k in ("steps", "batch_size", "grad_accum", "lr", "optimizer",
                                                          "schedule", "amp", "loss", "seed", "quantize",
                                                          "box_mask_prior")},
            **info}
    with atomic_path(out / "model_card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2))
    kwargs = "".join(f", {k}={v!r}" for k, v in config.student.kwargs.items())
    lines = [f"# {config.student.name} trained with swiftsam ({config.recipe})", "",
             f"- Teacher: {card['teacher']['name'] + ' (' + card['teacher']['checkpoint'] + ')' if card['teacher'] else 'none'}",
             f"- Data: {config.images}" + (f" with {config.annotations}" if config.annotations else "")
             + f" ({card['data']['images_seen']} samples seen, {card['data']['unreadable_images']} unreadable images skipped)",
             f"- Steps: {config.steps} x batch {config.batch_size} x {info['world_size']} process(es)"
             f" x accumulation {config.grad_accum}; {config.optimizer} lr {config.lr}, {config.schedule} schedule, amp {config.amp}",
             f"- Final training loss: {info['final_loss']:.5g}"]
    if config.box_mask_prior:
        lines.append("- Box mask prior: box prompts also enter as a box-shaped mask; run the model with "
                     "model.box_mask_prior = True (the Predictor then adds the prior itself).")
    if config.quantize == "qat":
        lines.append("- Quantization-aware training: the image encoder ran fake-quantized W8A8 (int8 per-channel "
                     "weights, int8 per-tensor activations); load model.pt with swiftsam.load and export it to get "
                     "a QDQ ONNX encoder.")
    for when in ("eval_at_start", "eval_at_end"):
        if info.get(when):
            e = info[when]
            lines.append(f"- {when.replace('_', ' ')}: " + ", ".join(f"{k} {v:.4f}" for k, v in e.items()))
    lines += ["", "Load it with:", "", "```python", "import swiftsam",
              f"model = swiftsam.load({config.student.name!r}, checkpoint='model.pt'{kwargs})", "```",
              "", f"sha256 of model.pt: `{info['sha256']}`", ""]
    with atomic_path(out / "MODEL_CARD.md") as tmp:
        tmp.write_text("\n".join(lines))


def train(config: TrainConfig, progress: bool = True, stop_after: int | None = None) -> dict:
    """Run (or resume) a training job; returns the model card's contents."""
    config.validate()
    d = ddp.init("cuda" if config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
                 else "cpu")
    try:
        return _train(config, d, progress, stop_after)
    finally:
        ddp.shutdown(d)


def _train(config: TrainConfig, d: ddp.Dist, progress: bool, stop_after: int | None) -> dict:
    device = _device(config, d)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(config.out)
    ckpt_path = out / "checkpoints" / "last.pt"
    _check_same_run(out, config)
    ddp.barrier(d)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.json") as tmp:
            tmp.write_text(json.dumps(config.as_dict(), indent=2))
    seed_everything(config.seed)
    recipe = make_recipe(config, device, _autocast_factory(config.amp, device))
    if config.quantize == "qat" and not ckpt_path.exists():
        recipe.calibrate()  # a resumed run takes the ranges from its checkpoint
    params = recipe.parameters()
    ddp.broadcast_module(recipe.student, d)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    start, skipped, seen = 0, set(), 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        recipe.student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start, skipped, seen = int(state["step"]), set(state["skipped"]), int(state["seen"])
        if d.main:
            log.info("resuming %s from step %d", out, start)
    dataset = recipe.dataset()
    sampler = StepSampler(len(dataset), config.batch_size, config.seed, d.rank, d.world,
                          start_step=start * config.grad_accum, steps=config.steps * config.grad_accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.workers, persistent_workers=False)
    metrics = Metrics(out, d.main, config.tensorboard, start)
    val = None
    if config.val_images:
        from ..eval.dataset import CocoImages

        val = CocoImages(config.val_images, config.val_annotations)
    eval_start = None
    if val is not None and start == 0 and d.main:
        eval_start = evaluate_boxes(recipe.student, recipe.teacher, val, config.eval_images)
        metrics.write(0, "eval", eval_start)
    elif ckpt_path.exists() and d.main:
        eval_start = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("eval_at_start")
    ddp.barrier(d)

    bar = None
    if progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc=f"train {config.recipe}", unit="step")
    batches = iter(loader)
    last = {"loss": float("nan")}
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        torch.manual_seed(int(np.random.SeedSequence([config.seed, step, d.rank]).generate_state(1)[0]))
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(config.grad_accum):
            batch = next(batches)
            req = batch.pop("requested", None)
            if req is not None:
                skipped |= {int(r) for r, i in zip(req, batch["index"]) if int(r) != int(i)}
            loss, values = recipe.loss(batch, step, d.rank, micro)
            scaler.scale(loss / config.grad_accum).backward()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / config.grad_accum
        ddp.average_gradients(params, d)
        lr_used = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        ddp.sync_buffers(recipe.student, d)
        seen += config.batch_size * config.grad_accum * d.world
        last = {k: ddp.mean_scalar(v, d) for k, v in sums.items()}
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            metrics.write(done, "train", {**last, "lr": lr_used,
                                          "images_per_s": seen / max(1e-9, time.perf_counter() - t0)})
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {last['loss']:.4g}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            all_skipped = _gather_skipped(skipped, d)
            if d.main:
                state = {"step": done, "student": recipe.student.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
                         "skipped": sorted(all_skipped), "seen": seen, "eval_at_start": eval_start}
                save_torch_atomic(state, ckpt_path)
            ddp.barrier(d)
        if val is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps:
            if d.main:
                metrics.write(done, "eval", evaluate_boxes(recipe.student, recipe.teacher, val, config.eval_images))
            ddp.barrier(d)
        if stop_after is not None and done == stop_after and done < config.steps:
            if bar is not None:
                bar.close()
            metrics.close()
            raise Interrupted(f"stopped after step {done}")
    if bar is not None:
        bar.close()
    divergence = ddp.max_divergence(list(recipe.student.state_dict().values()), d)
    skipped = _gather_skipped(skipped, d)
    if skipped and d.main:
        log.warning("%d unreadable image(s) were skipped", len(skipped))
    info = {}
    if d.main:
        eval_end = evaluate_boxes(recipe.student, recipe.teacher, val, config.eval_images) if val is not None else None
        if eval_end is not None:
            metrics.write(config.steps, "eval", eval_end)
        save_checkpoint(recipe.student, out / "model.pt")  # the same weights always give the same file (and sha256)
        info = {"world_size": d.world, "ranks_max_weight_difference": divergence, "final_loss": last.get("loss"),
                "final_metrics": last, "eval_at_start": eval_start, "eval_at_end": eval_end,
                "decoder_from_teacher": recipe.decoder_from_teacher, "device": str(device), "torch": torch.__version__,
                "sha256": _sha256(out / "model.pt"),
                "data": {"images_seen": seen, "unreadable_images": len(skipped), "dataset_size": len(dataset)}}
        _write_card(out, config, dict(info))
        info["data"] = {"images_seen": seen, "unreadable_images": len(skipped), "dataset_size": len(dataset)}
    metrics.close()
    ddp.barrier(d)
    return info


def _gather_skipped(skipped: set[int], d: ddp.Dist) -> set[int]:
    if not d.active:
        return set(skipped)
    gathered: list = [None] * d.world
    torch.distributed.all_gather_object(gathered, sorted(skipped))
    return {i for part in gathered for i in part}
