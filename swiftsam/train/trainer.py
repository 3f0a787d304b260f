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

import json
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..runtime import autocast, resolve_device
from ..utils import atomic_path, save_torch_atomic, sha256_of
from ..zoo.checkpoint import save_checkpoint as save_model
from . import distributed as ddp
from .config import TrainConfig
from .data import StepSampler, collate, seed_everything, to_device
from .evaluate import evaluate_boxes
from .recipes import make_recipe

log = logging.getLogger("swiftsam.train")

# settings a resumed run may change: they do not affect the weights
FREE_TO_CHANGE = {"eval_every", "eval_images", "log_every", "checkpoint_every", "workers", "tensorboard",
                  "val_images", "val_annotations"}
# settings a resumed run may change that reshape the rest of the run: the learning-rate schedule is recomputed
# for the new length (a run can be shortened or extended); the change is logged
RESCHEDULES = {"steps"}


# batches each DataLoader worker prepares ahead of the training loop (torch's default is 2)
PREFETCH_FACTOR = 4


class Interrupted(Exception):
    """Raised by ``train(stop_after=k)`` right after step k: a stand-in for a kill, used by tests."""


def _device(config: TrainConfig, d: ddp.Dist) -> torch.device:
    dev = resolve_device(config.device)  # auto, cpu, cuda, cuda:N, checked (a clear error for CUDA without it)
    if dev.type == "cuda" and dev.index is None:  # torch.cuda.set_device needs an index: this process's GPU
        dev = torch.device("cuda", d.local_rank)
    return dev


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


class Feed:
    """Where one logged interval's wall time went: ``data_wait_s`` (the loop waiting for batches: loading,
    decoding and augmenting that the workers had not done ahead, and the copy to the device), ``compute_s``
    (the rest of the optimiser steps: forward, backward, update) and ``other_s`` (checkpoints, evaluations,
    logging); the three sum to ``interval_s``. On a GPU, the step that closes the interval synchronises the
    device first, so the kernels the host queued count as compute of that interval (the only synchronisation
    added)."""

    def __init__(self, trainer: Trainer, start: float) -> None:
        self.trainer, self.start, self.steps_wall = trainer, start, 0.0
        self.wait0, self.seen0 = trainer.data_wait, trainer.seen

    def step_ended(self, t_step: float, sync: bool) -> None:
        if sync and self.trainer.device.type == "cuda":
            torch.cuda.synchronize(self.trainer.device)
        self.steps_wall += time.perf_counter() - t_step

    def interval(self, now: float) -> dict[str, float]:
        """The interval since the last call (or the start) as metrics; starts the next interval at ``now``."""
        tr = self.trainer
        wall = max(1e-9, now - self.start)
        steps = min(self.steps_wall, wall)
        wait = min(tr.data_wait - self.wait0, steps)
        images = tr.seen - self.seen0
        out = {"interval_s": wall, "data_wait_s": wait, "compute_s": steps - wait, "other_s": wall - steps,
               "data_wait_fraction": wait / max(1e-9, steps), "interval_images_per_s": images / wall}
        self.start, self.steps_wall, self.wait0, self.seen0 = now, 0.0, tr.data_wait, tr.seen
        return out


class Trainer:
    """One training run in ``config.out``, on this process's share of the data under ``torchrun``.

    ``Trainer(config, d)`` sets up: the device, the out folder (same settings as a run already there),
    the recipe, optimizer, learning-rate schedule and gradient scaler. ``run()`` then ``resume``s from
    ``checkpoints/last.pt`` when there is one, builds the data, ``evaluate``s at the start, runs ``step``
    for every remaining optimiser step with ``save_checkpoint`` and ``evaluate`` on their schedules, and
    ``finish``es: the final evaluation, ``model.pt`` and the model card (``write_card``).
    """

    def __init__(self, config: TrainConfig, d: ddp.Dist, progress: bool = True) -> None:
        self.config, self.d, self.progress = config, d, progress
        self.device = device = _device(config, d)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.out = Path(config.out)
        self.ckpt_path = self.out / "checkpoints" / "last.pt"
        _check_same_run(self.out, config)
        ddp.barrier(d)
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.out / "config.json") as tmp:
                tmp.write_text(json.dumps(config.as_dict(), indent=2))
        seed_everything(config.seed)
        self.recipe = make_recipe(config, device, lambda: autocast(device, config.amp))
        if config.quantize == "qat" and not self.ckpt_path.exists():
            self.recipe.calibrate()  # a resumed run takes the ranges from its checkpoint
        self.params = self.recipe.parameters()
        ddp.broadcast_module(self.recipe.student, d)
        opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        # the first step to run; indices of unreadable images skipped (this rank); samples seen (all ranks)
        self.start, self.skipped, self.seen = 0, set(), 0
        self.last: dict[str, float] = {"loss": float("nan")}  # the latest step's losses, averaged over ranks
        self.eval_start: dict[str, float] | None = None
        self.val = None
        self.dataset = self.loader = self.metrics = None
        self.data_wait = 0.0  # seconds the loop waited for batches (data loading and the copy to the device)

    def resume(self) -> None:
        """Take up the run in ``checkpoints/last.pt`` when there is one: weights, optimizer, scheduler,
        scaler, RNG state, step, skipped images, samples seen and the evaluation at the start."""
        if not self.ckpt_path.exists():
            return
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        self.recipe.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.start, self.skipped, self.seen = int(state["step"]), set(state["skipped"]), int(state["seen"])
        if self.d.main:
            self.eval_start = state.get("eval_at_start")
            log.info("resuming %s from step %d", self.out, self.start)

    def build_data(self) -> None:
        """The recipe's dataset and a loader that continues where the run stands (``self.start``)."""
        config, d = self.config, self.d
        self.dataset = self.recipe.dataset()
        sampler = StepSampler(len(self.dataset), config.batch_size, config.seed, d.rank, d.world,
                              start_step=self.start * config.grad_accum, steps=config.steps * config.grad_accum)
        workers = config.workers > 0
        # on a GPU: batches in pinned memory, so their copies to the device (to_device) are asynchronous;
        # workers keep PREFETCH_FACTOR batches each ready ahead of the loop
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                                  num_workers=config.workers, pin_memory=self.device.type == "cuda",
                                                  prefetch_factor=PREFETCH_FACTOR if workers else None,
                                                  persistent_workers=workers)
        if config.val_images:
            from ..eval.dataset import CocoImages

            self.val = CocoImages(config.val_images, config.val_annotations)

    def evaluate(self) -> dict[str, float]:
        """Box-protocol evaluation of the student on the validation set (rank 0 only)."""
        return evaluate_boxes(self.recipe.student, self.recipe.teacher, self.val, self.config.eval_images)

    def step(self, step: int, batches: Iterator[dict]) -> float:
        """One optimiser step (``grad_accum`` micro-batches, gradients averaged over ranks); returns the
        learning rate it used."""
        config, d = self.config, self.d
        torch.manual_seed(int(np.random.SeedSequence([config.seed, step, d.rank]).generate_state(1)[0]))
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(config.grad_accum):
            t = time.perf_counter()
            batch = to_device(next(batches), self.device)
            self.data_wait += time.perf_counter() - t
            req = batch.pop("requested", None)
            if req is not None:
                self.skipped |= {int(r) for r, i in zip(req, batch["index"]) if int(r) != int(i)}
            loss, values = self.recipe.loss(batch, step, d.rank, micro)
            self.scaler.scale(loss / config.grad_accum).backward()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / config.grad_accum
        ddp.average_gradients(self.params, d)
        lr_used = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        ddp.sync_buffers(self.recipe.student, d)
        self.seen += config.batch_size * config.grad_accum * d.world
        self.last = {k: ddp.mean_scalar(v, d) for k, v in sums.items()}
        return lr_used

    def save_checkpoint(self, done: int) -> None:
        """``checkpoints/last.pt`` after ``done`` steps (atomic; written by rank 0, all ranks wait)."""
        all_skipped = _gather_skipped(self.skipped, self.d)
        if self.d.main:
            state = {"step": done, "student": self.recipe.student.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": _rng_state(), "skipped": sorted(all_skipped),
                     "seen": self.seen, "eval_at_start": self.eval_start}
            save_torch_atomic(state, self.ckpt_path)
        ddp.barrier(self.d)

    def run(self, stop_after: int | None = None) -> dict:
        """Resume, train the remaining steps and finish; returns the model card's contents (rank 0).
        ``stop_after=k`` raises ``Interrupted`` right after step k (a stand-in for a kill)."""
        config, d = self.config, self.d
        self.resume()
        self.build_data()
        self.metrics = metrics = Metrics(self.out, d.main, config.tensorboard, self.start)
        if self.val is not None and self.start == 0 and d.main:
            self.eval_start = self.evaluate()
            metrics.write(0, "eval", self.eval_start)
        ddp.barrier(d)

        bar = None
        if self.progress and d.main:
            from tqdm import tqdm

            bar = tqdm(total=config.steps, initial=self.start, desc=f"train {config.recipe}", unit="step")
        batches = iter(self.loader)
        t0 = time.perf_counter()
        seen0 = self.seen
        feed = Feed(self, t0)
        for step in range(self.start, config.steps):
            t_step = time.perf_counter()
            lr_used = self.step(step, batches)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                feed.step_ended(t_step, sync=True)
                now = time.perf_counter()
                metrics.write(done, "train", {**self.last, "lr": lr_used,
                                              "images_per_s": (self.seen - seen0) / max(1e-9, now - t0),
                                              **feed.interval(now)})
            else:
                feed.step_ended(t_step, sync=False)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {self.last['loss']:.4g}")
            if done % config.checkpoint_every == 0 or done == config.steps:
                self.save_checkpoint(done)
            if self.val is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps:
                if d.main:
                    metrics.write(done, "eval", self.evaluate())
                ddp.barrier(d)
            if stop_after is not None and done == stop_after and done < config.steps:
                if bar is not None:
                    bar.close()
                metrics.close()
                raise Interrupted(f"stopped after step {done}")
        if bar is not None:
            bar.close()
        return self.finish()

    def finish(self) -> dict:
        """Rank 0: the final evaluation, ``model.pt`` and the model card; returns the card's contents
        (empty on the other ranks)."""
        config, d = self.config, self.d
        divergence = ddp.max_divergence(list(self.recipe.student.state_dict().values()), d)
        skipped = _gather_skipped(self.skipped, d)
        if skipped and d.main:
            log.warning("%d unreadable image(s) were skipped", len(skipped))
        info = {}
        if d.main:
            eval_end = self.evaluate() if self.val is not None else None
            if eval_end is not None:
                self.metrics.write(config.steps, "eval", eval_end)
            model_path = self.out / "model.pt"
            save_model(self.recipe.student, model_path)  # the same weights always give the same file (and sha256)
            info = {"world_size": d.world, "ranks_max_weight_difference": divergence,
                    "final_loss": self.last.get("loss"), "final_metrics": self.last, "eval_at_start": self.eval_start,
                    "eval_at_end": eval_end, "decoder_from_teacher": self.recipe.decoder_from_teacher,
                    "device": str(self.device), "torch": torch.__version__, "sha256": sha256_of(model_path),
                    "data": {"images_seen": self.seen, "unreadable_images": len(skipped),
                             "dataset_size": len(self.dataset)}}
            self.write_card(info)
        self.metrics.close()
        ddp.barrier(d)
        return info

    def write_card(self, info: dict) -> None:
        """``model_card.json`` (the settings and ``info``) and ``MODEL_CARD.md`` (the same, for people)."""
        config, info = self.config, dict(info)
        card = {"recipe": config.recipe, "student": {"name": config.student.name, "kwargs": config.student.kwargs},
                "teacher": None if config.teacher is None else {"name": config.teacher.name,
                                                                "checkpoint": config.teacher.checkpoint},
                "data": {"images": config.images, "annotations": config.annotations, **info.pop("data")},
                "training": {k: getattr(config, k) for k in ("steps", "batch_size", "grad_accum", "lr", "optimizer",
                                                              "schedule", "amp", "loss", "seed", "quantize",
                                                              "box_mask_prior")},
                **info}
        with atomic_path(self.out / "model_card.json") as tmp:
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
        with atomic_path(self.out / "MODEL_CARD.md") as tmp:
            tmp.write_text("\n".join(lines))


def train(config: TrainConfig, progress: bool = True, stop_after: int | None = None) -> dict:
    """Run (or resume) a training job; returns the model card's contents."""
    config.validate()
    d = ddp.init(resolve_device(config.device).type)
    try:
        return Trainer(config, d, progress).run(stop_after)
    finally:
        ddp.shutdown(d)


def _gather_skipped(skipped: set[int], d: ddp.Dist) -> set[int]:
    if not d.active:
        return set(skipped)
    gathered: list = [None] * d.world
    torch.distributed.all_gather_object(gathered, sorted(skipped))
    return {i for part in gathered for i in part}
