"""``train-video``: the memory modules of swiftsam's own video model (``swiftsam-r18-video``) on short clips.

The image model (encoder, prompt encoder, mask decoder: swiftsam-r18's bundled weights) stays frozen, so every
training frame's embedding is computed once and cached in fp16 (``OUT/cache.pt``); a step then runs only the
memory attention, the memory encoder and the decoder on cached features. Clips come from two sources:

- real video: DAVIS sequences (``davis_sequences``; hold others out for evaluation), ``clip_len`` frames at a
  random temporal stride (1-3), tracked from the first frame's ground-truth mask;
- still images with instance masks (COCO roots), moved by a smooth random affine motion and crossed by an
  occluder (a patch of another image), as SAM 2 did with SA-1B. The motion is applied to the cached embedding
  (minus the encoder's learned position term, added back afterwards) and to the masks, so no image is
  re-encoded. An object that the occluder hides completely, or that leaves the frame, is absent on that frame.

Each clip is tracked as ``VideoPredictor`` tracks (``video.memory.Sam2Tracker``, the model's own tracker
settings): frame 0's ground-truth mask is the first memory (as ``add_new_mask`` makes it); every later frame
attends to the memories of the earlier ones and predicts the object's mask (``OwnVideoSam.memory_prior``, the
decoder's prompt at inference; the frozen decoder is not run in training). Loss (SAM 2's mask terms, frames 1..):
focal (weight 20, every object: an absent one must predict nothing) + dice (1, present objects). A frame's memory
is encoded from its ground truth (``teacher_forcing``) or from the prediction.

Resumable: ``OUT/last.pt`` (trainable weights, optimiser, step, RNG states) every ``checkpoint_every`` steps and
at the end; a rerun with the same ``out`` continues from it. ``OUT/log.jsonl`` has one line per step;
``OUT/model.pt`` (the trainable weights) is written when training ends.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import InputError
from ..utils import save_torch_atomic
from .losses import dice_loss, focal_loss

FROZEN_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.")
TRAINED_DECODER_PREFIXES: tuple[str, ...] = ()


@dataclass
class VideoTrainConfig:
    out: str
    davis: str | None = "../shared/data/davis2016"
    davis_sequences: list[str] = field(default_factory=lambda: ["blackswan", "car-shadow"])
    coco: list[str] = field(default_factory=lambda: [
        "../shared/data/coco-mini/train2017:../shared/data/coco-mini/annotations/instances_train2017.json",
        "../shared/data/coco128/train2017:../shared/data/coco128/annotations/instances_train2017.json"])
    max_images: int | None = None  # per COCO source (tests)
    input_size: int = 256
    steps: int = 1500
    clip_len: list[int] = field(default_factory=lambda: [4, 8])  # min, max frames
    max_objects: int = 3
    davis_fraction: float = 0.4  # share of clips from real video
    occlusion: float = 0.5  # probability of an occluder in a synthetic clip
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 30
    grad_clip: float = 1.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    teacher_forcing: float = 0.5  # share of memories encoded from the ground truth instead of the prediction
    checkpoint_every: int = 50
    max_minutes: float | None = None  # stop (and save) after this much wall time in this run
    seed: int = 0
    threads: int | None = None
    memory_layers: int = 2
    memory_ffn: int = 256
    fuser_layers: int = 1
    init: str | None = "bundled"  # the image model's weights: "bundled" (swiftsam-r18) or None (random: tests)


def load_video_config(path: str | os.PathLike[str] | None = None, overrides: dict | None = None) -> VideoTrainConfig:
    """A config from a YAML file (keys = ``VideoTrainConfig`` fields; ``recipe: train-video`` allowed) and
    overrides."""
    data: dict = {}
    if path is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"cannot read the training config {path}: {e}") from e
        if not isinstance(data, dict):
            raise InputError(f"{path} must hold a mapping of settings")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data.pop("recipe", None)
    known = {f.name for f in fields(VideoTrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown train-video setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "out" not in data:
        raise InputError("train-video needs out: (the run's folder)")
    cfg = VideoTrainConfig(**data)
    if cfg.steps < 1 or cfg.checkpoint_every < 1:
        raise InputError("steps and checkpoint_every must be >= 1")
    lo, hi = cfg.clip_len
    if not 2 <= lo <= hi:
        raise InputError(f"clip_len must be [min, max] with 2 <= min <= max, got {cfg.clip_len}")
    return cfg


# ----------------------------------------------------------------------------- model
def build_video_student(cfg: VideoTrainConfig):
    """The model to train: ``build_own_video_sam`` with the image model's bundled weights (``init: bundled``)."""
    from ..modeling.sam2 import build_own_video_sam

    model = build_own_video_sam(cfg.input_size, memory_layers=cfg.memory_layers, memory_ffn=cfg.memory_ffn,
                                fuser_layers=cfg.fuser_layers)
    if cfg.init == "bundled":
        from ..zoo.bundled import read_bundled
        from ..zoo.registry import get_entry

        state = read_bundled(get_entry("swiftsam-r18").bundled)
        state = {("sam_" + k if k.startswith(("prompt_encoder.", "mask_decoder.")) else k): v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith(FROZEN_PREFIXES) and not k.startswith(TRAINED_DECODER_PREFIXES)
                             for k in missing):
            raise InputError(f"the image model's weights do not fit: unexpected {unexpected[:3]}, "
                             f"missing {missing[:3]}")
    elif cfg.init is not None:
        raise InputError(f"init must be 'bundled' or null, got {cfg.init!r}")
    return model


def is_trained(name: str) -> bool:
    return not name.startswith(FROZEN_PREFIXES) or name.startswith(TRAINED_DECODER_PREFIXES)


def trained_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_trained(k)}


# ----------------------------------------------------------------------------- cache
def _square_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0] >= 0.5)


@torch.no_grad()
def build_cache(cfg: VideoTrainConfig, model, log=print) -> dict:
    """Embeddings (fp16, the encoder's position term removed for still images) and square masks of every training
    frame; written to ``OUT/cache.pt`` once and read back on later runs."""
    from PIL import Image

    from ..video.frames import to_model_input

    path = Path(cfg.out) / "cache.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    s = cfg.input_size
    enc = model.image_encoder.eval()
    pos = enc.pos_embedding.detach()
    cache: dict = {"stills": [], "videos": {}}
    min_area = 0.004 * s * s
    for spec in cfg.coco:
        images, _, annotations = spec.partition(":")
        from ..eval.dataset import CocoImages

        data = CocoImages(images, annotations)
        ids = list(data.image_ids)[: cfg.max_images]
        for image_id in ids:
            anns = [a for a in data.annotations(image_id) if not a.get("iscrowd", 0) and a.get("area", 0) > 0]
            masks = [_square_mask(data.gt_mask(a), s) for a in anns]
            masks = [m for m in masks if min_area <= m.sum() <= 0.8 * s * s]
            if not masks:
                continue
            masks.sort(key=lambda m: -int(m.sum()))
            image = np.asarray(Image.open(data.path(image_id)).convert("RGB"))
            embed = enc(to_model_input(image, s))[0]
            cache["stills"].append({"content": (embed - pos[0]).half(), "masks": torch.stack(masks[:8])})
        log(f"cache: {spec.split(':')[0]}: {len(ids)} images")
    if cfg.davis and cfg.davis_sequences:
        root = Path(cfg.davis)
        for seq in cfg.davis_sequences:
            frames = sorted((root / "JPEGImages" / seq).glob("*.jpg"))
            labels = sorted((root / "Annotations" / seq).glob("*.png"))
            if not frames or len(frames) != len(labels):
                raise InputError(f"DAVIS sequence {seq} in {root}: {len(frames)} frames, {len(labels)} masks")
            embeds, masks = [], []
            for f, lab in zip(frames[: cfg.max_images], labels[: cfg.max_images]):
                embeds.append(enc(to_model_input(np.asarray(Image.open(f).convert("RGB")), s))[0].half())
                masks.append(_square_mask(np.asarray(Image.open(lab).convert("L")) > 127, s))
            cache["videos"][seq] = {"embeds": torch.stack(embeds), "masks": torch.stack(masks)}
            log(f"cache: DAVIS {seq}: {len(embeds)} frames")
    if not cache["stills"] and not cache["videos"]:
        raise InputError("no training data: give COCO sources (coco:) or DAVIS sequences")
    save_torch_atomic(cache, path)
    return cache


# ----------------------------------------------------------------------------- clips
def _affine(rng: random.Random, t: float, v: dict) -> torch.Tensor:
    """2 x 3 affine (normalised coordinates, output -> input) at time t of a smooth motion."""
    angle = v["rot"] * t
    scale = math.exp(v["zoom"] * t)
    tx, ty = v["tx"] * t + v["ax"] * t * t, v["ty"] * t + v["ay"] * t * t
    c, s_ = math.cos(angle) / scale, math.sin(angle) / scale
    return torch.tensor([[c, -s_, -tx], [s_, c, -ty]], dtype=torch.float32)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta[None], [1, x.shape[0], *x.shape[-2:]], align_corners=False)
    return F.grid_sample(x[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def synthetic_clip(cache: dict, pos: torch.Tensor, rng: random.Random, length: int, max_objects: int,
                   occlusion: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings T x C x 64 x 64, masks T x B x S x S) of a still image in smooth random motion."""
    still = cache["stills"][rng.randrange(len(cache["stills"]))]
    content = still["content"].float()
    n = min(len(still["masks"]), max_objects)
    masks = still["masks"][:n].float()
    v = {"rot": rng.uniform(-0.05, 0.05), "zoom": rng.uniform(-0.06, 0.06), "tx": rng.uniform(-0.08, 0.08),
         "ty": rng.uniform(-0.08, 0.08), "ax": rng.uniform(-0.01, 0.01), "ay": rng.uniform(-0.01, 0.01)}
    occ = None
    if rng.random() < occlusion and len(cache["stills"]) > 1:
        other = cache["stills"][rng.randrange(len(cache["stills"]))]
        g = content.shape[-1]
        w, h = rng.randint(g // 6, g // 2), rng.randint(g // 6, g // 2)
        x0, y0 = rng.uniform(-w, g), rng.uniform(-h, g)
        vx, vy = rng.uniform(-g / 8, g / 8), rng.uniform(-g / 8, g / 8)
        occ = (other["content"].float(), w, h, x0, y0, vx, vy)
    embeds, out_masks = [], []
    for t in range(length):
        theta = _affine(rng, float(t), v)
        e = _warp(content, theta, "bilinear")
        m = _warp(masks, theta, "bilinear") >= 0.5
        if occ is not None:
            src, w, h, x0, y0, vx, vy = occ
            g, s = e.shape[-1], m.shape[-1]
            x, y = int(round(x0 + vx * t)), int(round(y0 + vy * t))
            xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + w, g), min(y + h, g)
            if xa < xb and ya < yb:
                e[:, ya:yb, xa:xb] = src[:, ya:yb, xa:xb]
                r = s // g
                m[:, ya * r : yb * r, xa * r : xb * r] = False
        embeds.append(e + pos)
        out_masks.append(m)
    return torch.stack(embeds), torch.stack(out_masks)


def video_clip(cache: dict, rng: random.Random, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq = cache["videos"][rng.choice(sorted(cache["videos"]))]
    n = seq["embeds"].shape[0]
    stride = rng.randint(1, 3)
    while stride > 1 and (length - 1) * stride >= n:
        stride -= 1
    length = min(length, n)
    start = rng.randrange(n - (length - 1) * stride)
    idx = list(range(start, start + (length - 1) * stride + 1, stride))
    if rng.random() < 0.5:  # tracked backwards
        idx = idx[::-1]
    return seq["embeds"][idx].float(), seq["masks"][idx][:, None]



def clip_loss(model, tracker, embeds: torch.Tensor, masks: torch.Tensor, cfg: VideoTrainConfig,
              rng: random.Random | None = None) -> dict:
    """Track a clip (embeddings T x C x 64 x 64, masks T x B x S x S, frame 0 the prompt) and return its losses.

    The frozen decoder is not run: the loss is on the memory's mask prediction (``OwnVideoSam.memory_prior``,
    at the mask-input grid), which prompts the decoder at inference. A frame's memory is encoded from its ground
    truth (``teacher_forcing`` of the time, as a good decoder output would be) or from that prediction."""
    from ..video.memory import ObjectOutput

    rng = rng or random.Random(0)
    t_len = masks.shape[0]
    present = masks.flatten(2).any(-1).float()  # T x B
    keep = present[0] > 0
    masks, present = masks[:, keep], present[:, keep]
    b = masks.shape[1]
    if b == 0:
        return {}
    s = masks.shape[-1]
    feats = [tracker.features_from(model.backbone_from_embedding(embeds[t : t + 1])) for t in range(t_len)]

    def remember(t: int, high: torch.Tensor, score: torch.Tensor, store: list[dict]) -> None:
        mem = tracker.encode_memory(feats[t], high, score, False, torch.float32)
        for i in range(b):
            store[i][t] = ObjectOutput(high[i : i + 1], score.new_zeros(1, 1), score[i : i + 1], mem[i : i + 1])

    cond: list[dict] = [{} for _ in range(b)]
    non_cond: list[dict] = [{} for _ in range(b)]
    ones = torch.full((b, 1), 10.0)
    remember(0, masks[0][:, None].float() * 20 - 10, ones, cond)
    focal = dice = 0.0
    n = 0
    for t in range(1, t_len):
        specs = [tracker.select_memory(t, cond[i], non_cond[i], t_len, False) for i in range(b)]
        _, _, h, w = feats[t].vision.shape
        memory, memory_pos, mask, n_ptr = tracker.pack(specs, h, w)
        prior = model.memory_prior(tracker.attend(feats[t], memory, memory_pos, mask, n_ptr))
        g = prior.shape[-1]
        target = F.interpolate(masks[t][:, None].float(), size=(g, g), mode="area")
        focal = focal + focal_loss(prior, target).sum()
        dice = dice + (dice_loss(prior, (target >= 0.5).float())[:, 0] * present[t]).sum()
        n += b
        if rng.random() < cfg.teacher_forcing:
            high = masks[t][:, None].float() * 20 - 10
            score = torch.where(present[t] > 0, 10.0, -10.0)[:, None]
        else:
            high = F.interpolate(prior.detach(), size=(s, s), mode="bilinear", align_corners=False)
            score = torch.where(high.flatten(1).amax(1) > 0, 10.0, -10.0)[:, None]
        remember(t, high, score, non_cond)
    out = {"focal": focal / n, "dice": dice / max(float(present[1:].sum()), 1.0)}
    out["loss"] = cfg.focal_weight * out["focal"] + cfg.dice_weight * out["dice"]
    return out


# ----------------------------------------------------------------------------- loop
def _lr(cfg: VideoTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def train_video(cfg: VideoTrainConfig, log=print) -> dict:
    """Train (or resume) the video model's memory modules; returns a summary."""
    from ..video.memory import Sam2Tracker, TrackerConfig

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_video_student(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trained(name))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, rng = 0, random.Random(cfg.seed)
    last = out / "last.pt"
    if last.is_file():
        ck = torch.load(last, weights_only=False)
        if ck.get("architecture") != [cfg.input_size, cfg.memory_layers, cfg.memory_ffn, cfg.fuser_layers]:
            raise InputError(f"{last} was trained with another architecture ({ck.get('architecture')}); "
                             "use another out")
        model.load_state_dict(ck["model"], strict=False)
        opt.load_state_dict(ck["optimizer"])
        step = ck["step"]
        rng.setstate(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {last} at step {step}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    cache = build_cache(cfg, model, log)
    pos = model.image_encoder.pos_embedding.detach()[0].float()
    model.train()
    model.image_encoder.eval()
    model.sam_prompt_encoder.eval()
    model.sam_mask_decoder.eval()
    tracker = Sam2Tracker(model, TrackerConfig(**model.video_defaults))

    def save() -> None:
        save_torch_atomic({"model": trained_state(model), "optimizer": opt.state_dict(), "step": step,
                           "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "config": asdict(cfg),
                           "architecture": [cfg.input_size, cfg.memory_layers, cfg.memory_ffn, cfg.fuser_layers]},
                          last)

    start = time.monotonic()
    stopped_early = False
    last_loss = None
    with open(out / "log.jsonl", "a") as log_file:
        while step < cfg.steps:
            if cfg.max_minutes is not None and time.monotonic() - start > 60 * cfg.max_minutes:
                stopped_early = True
                break
            t0 = time.monotonic()
            length = rng.randint(*cfg.clip_len)
            use_video = bool(cache["videos"]) and (not cache["stills"] or rng.random() < cfg.davis_fraction)
            if use_video:
                embeds, masks = video_clip(cache, rng, length)
            else:
                embeds, masks = synthetic_clip(cache, pos, rng, length, cfg.max_objects, cfg.occlusion)
            losses = clip_loss(model, tracker, embeds, masks, cfg, rng)
            if not losses:
                continue
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            last_loss = float(losses["loss"].detach())
            row = {"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}, "lr": _lr(cfg, step - 1),
                   "frames": int(embeds.shape[0]), "objects": int(masks.shape[1]),
                   "source": "davis" if use_video else "still", "sec": round(time.monotonic() - t0, 3)}
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            if step % cfg.checkpoint_every == 0:
                save()
                log(f"step {step}: loss {last_loss:.4f} (checkpoint)")
    save()
    done = step >= cfg.steps
    if done or stopped_early:
        save_torch_atomic(trained_state(model), out / "model.pt")
    return {"step": step, "done": done, "stopped_early": stopped_early, "loss": last_loss}


MEMORY_FILE = "swiftsam-r18-video-memory.fp16.pt"


def write_memory_weights(model_pt: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The trained modules of a run (``OUT/model.pt``) as the bundled fp16 file; returns its sha256."""
    from ..zoo.bundled import write_fp16

    state = torch.load(model_pt, weights_only=True)
    if not state or any(not is_trained(k) for k in state):
        raise InputError(f"{model_pt} is not a train-video result (trained modules only)")
    return write_fp16(state, path, ("",))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="train swiftsam-r18-video's memory modules (train-video)")
    p.add_argument("config", help="YAML with VideoTrainConfig settings")
    p.add_argument("--out")
    p.add_argument("--steps", type=int)
    p.add_argument("--max-minutes", type=float)
    a = p.parse_args(argv)
    cfg = load_video_config(a.config, {"out": a.out, "steps": a.steps, "max_minutes": a.max_minutes})
    print(json.dumps(train_video(cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
