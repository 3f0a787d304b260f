"""The three recipes. Each builds its student (and teacher), its dataset, and the loss of one batch.

- ``distill-encoder`` (NanoSAM): the student's image encoder learns the teacher's image embedding;
  the student's prompt encoder and mask decoder are the teacher's, frozen.
- ``distill-full`` (TinySAM's full-stage distillation): the embedding, the decoder's output tokens
  and its mask logits are all distilled, for prompts sampled from ground-truth objects: round 0 a
  box or a point, later rounds a click in the error region between the student's prediction and the
  ground truth (hard prompt sampling, previous logits as mask input), and each mask's loss weighted
  by how far the teacher is from the ground truth on it (hard mask weighting).
- ``train-masks`` (EfficientViT-SAM stage 2, or fine-tuning on custom data): focal + dice + IoU
  loss against the ground truth, boxes with jitter / points inside the mask / iterative error clicks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..api import build, load
from ..errors import InputError
from ..modeling.prompt_decoder import PromptDecoder
from ..modeling.sam import Sam
from ..utils import save_torch_atomic
from .config import TrainConfig
from .data import CocoObjects, DistillImages, EncoderInputs
from .losses import embedding_loss, logits_iou, sam_mask_loss
from ..prompts import box_prior_logits
from .prompts import as_generator, error_clicks, first_prompts

log = logging.getLogger("swiftsam.train")


def load_model(spec, default_checkpoint: str, device: torch.device) -> Sam:
    """A zoo model from a ModelSpec: its checkpoint file, the official weights, or a seeded random init."""
    checkpoint = default_checkpoint if spec.checkpoint == "auto" else spec.checkpoint
    if checkpoint == "random":
        torch.manual_seed(spec.seed)
        model = build(spec.name, **spec.kwargs)
    elif checkpoint == "official":
        model = load(spec.name, **spec.kwargs)
    else:
        model = load(spec.name, checkpoint=checkpoint, **spec.kwargs)
    return model.to(device)


def _copy_if_compatible(src: nn.Module, dst: nn.Module) -> bool:
    a, b = src.state_dict(), dst.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return False
    dst.load_state_dict(a)
    return True


def _copy_matching(src: nn.Module, dst: nn.Module) -> int:
    """Copy every tensor of ``src`` whose name and shape ``dst`` shares; returns how many."""
    a, b = src.state_dict(), dst.state_dict()
    same = {k: v for k, v in a.items() if k in b and b[k].shape == v.shape}
    dst.load_state_dict(same, strict=False)
    return len(same)


def _copy_all_but_encoder(src: nn.Module, dst: nn.Module) -> bool:
    """SAM 2: copy every tensor outside ``image_encoder`` (prompt encoder, decoder with conv_s0 / conv_s1, memory
    attention and encoder, the top-level embeddings and projections) when ``dst`` has exactly the same ones."""
    keep = lambda sd: {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}  # noqa: E731
    a, b = keep(src.state_dict()), keep(dst.state_dict())
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return False
    dst.load_state_dict(a, strict=False)
    return True


def multi_level(model: nn.Module) -> bool:
    """A SAM 2-style model: several feature levels (the image stage returns the embedding and high-res levels)."""
    return len(model.contract.features) > 1


def distilled_levels(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps ``distill-encoder`` matches, coarse to fine: SAM 1, the image embedding; SAM 2, the neck's
    raw FPN levels (``backbone_fpn``, 256 channels at strides 16, 8, 4) before conv_s0 / conv_s1 and no_mem_embed.
    Those are what the memory encoder reads (stride 16) and what the decoder's (teacher-owned, frozen) projections
    read, so matching them matches every input of the decoder and the memory."""
    out = model.image_encoder(x)
    if isinstance(out, torch.Tensor):
        return [out]
    return sorted(out["backbone_fpn"], key=lambda f: f.shape[-1])


def _layout(model: nn.Module) -> str:
    levels = ", ".join(f"{f.name} {f.channels}x{f.size}x{f.size}" for f in model.contract.features)
    return f"input {model.spec.input_size} px: {levels}"


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class Recipe:
    name = ""
    student_default = "random"

    def __init__(self, config: TrainConfig, device: torch.device, autocast) -> None:
        self.config, self.device, self.autocast = config, device, autocast
        self.teacher = load_model(config.teacher, "official", device) if config.teacher else None
        if self.teacher is not None:
            _freeze(self.teacher)
        self.student = load_model(config.student, self.student_default, device)
        sam2 = [s.name for s, m in ((config.student, self.student), (config.teacher, self.teacher))
                if m is not None and multi_level(m)]
        if sam2 and self.name != "distill-encoder":
            raise InputError(f"{self.name} trains SAM 1 models only (one image embedding); {sam2[0]} is a SAM 2.1 "
                             f"model: distil it with recipe: distill-encoder.")
        if self.teacher is not None:
            t_levels, s_levels = (tuple(f.name for f in m.contract.features) for m in (self.teacher, self.student))
            if len(t_levels) != len(s_levels):
                raise InputError(
                    f"the teacher {config.teacher.name} has {len(t_levels)} feature level(s) ({', '.join(t_levels)}) and "
                    f"the student {config.student.name} {len(s_levels)} ({', '.join(s_levels)}): a student of a SAM 2 "
                    f"teacher must produce every level its decoder uses; pick a SAM 1 teacher (e.g. mobilesam) or a "
                    f"student with SAM 2's levels (e.g. nanosam2-resnet18)."
                )
            if len(t_levels) > 1 and self.teacher.contract.features != self.student.contract.features:
                raise InputError(
                    f"the teacher {config.teacher.name} ({_layout(self.teacher)}) and the student "
                    f"{config.student.name} ({_layout(self.student)}) must have the same input size and feature "
                    f"sizes: the student takes the teacher's decoder and memory modules, which are built for one "
                    f"size; give both the same kwargs: {{input_size: N}}.")
        self.decoder_from_teacher = False
        if self.teacher is not None and config.student.checkpoint in ("auto", "random"):
            # NanoSAM / TinySAM: the student starts from (and here keeps) the teacher's prompt side;
            # nanosam2: all but the image encoder (prompt encoder, decoder with conv_s0 / conv_s1, memory modules)
            if multi_level(self.teacher):
                self.decoder_from_teacher = _copy_all_but_encoder(self.teacher, self.student)
            else:
                ok = _copy_if_compatible(self.teacher.prompt_encoder, self.student.prompt_encoder)
                self.decoder_from_teacher = ok and _copy_if_compatible(self.teacher.mask_decoder,
                                                                       self.student.mask_decoder)
        if self.teacher is not None and config.init_from_teacher:
            copied = _copy_matching(self.teacher.image_encoder, self.student.image_encoder)
            log.info("student image encoder: %d of %d tensors start from the teacher's", copied,
                     len(self.student.image_encoder.state_dict()))
        if config.quantize == "qat":
            from ..modeling.quant import prepare, quant_layers

            if not quant_layers(self.student.image_encoder):  # a PTQ checkpoint comes back already quantized
                prepare(self.student.image_encoder)
        self.setup()

    def calibrate(self) -> int:
        """QAT: initial activation ranges from the first training images (min-max)."""
        from ..modeling.quant import calibrate
        from .data import preprocessed, training_images

        files = training_images(self.config.images)[: self.config.qat_calibration]
        return calibrate(self.student, preprocessed(self.student, files), "minmax")

    def setup(self) -> None:
        """Freeze what does not train; put what trains in train mode."""

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def loss(self, batch: dict, step: int, rank: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @property
    def uint8_inputs(self) -> bool:
        """Whether the loader hands encoder inputs over as uint8, normalised on the device (``EncoderInputs``):
        on a GPU, a quarter of the bytes to pin and copy; on the CPU the workers normalise them."""
        return self.device.type != "cpu"

    def _coco(self) -> CocoObjects:
        c = self.config
        specs = {"student": self.student.spec, **({"teacher": self.teacher.spec} if self.teacher is not None else {})}
        self.data = CocoObjects(c.images, c.annotations, self.student.spec.prompt_size, c.objects_per_image, c.seed,
                                inputs=EncoderInputs(specs, self.uint8_inputs),
                                low=self.student.contract.mask_input_size[0])
        return self.data

    def _input(self, batch: dict, role: str, rows: list[int] | None = None) -> torch.Tensor:
        """The model ``role``'s (``student`` / ``teacher``) B x 3 x S x S encoder input for the batch, on the
        device: made by the loader's workers (``data.EncoderInputs``)."""
        return self.data.inputs.batch_input(batch, role, rows).to(self.device)


class DistillEncoder(Recipe):
    name = "distill-encoder"

    def setup(self) -> None:
        c = self.config
        if not self.decoder_from_teacher and c.student.checkpoint in ("auto", "random"):
            what = "prompt encoder, mask decoder and memory modules" if multi_level(self.teacher) else "mask decoder"
            raise InputError(f"the student {c.student.name} cannot take the teacher {c.teacher.name}'s {what} "
                             f"(different shapes).")
        _freeze(self.student)
        for p in self.student.image_encoder.parameters():
            p.requires_grad_(True)
        self.student.image_encoder.train()
        # (name, weight) of each distilled level, coarse to fine
        if multi_level(self.teacher):
            size = self.teacher.spec.input_size
            sizes = sorted(f.size for f in self.teacher.contract.features)
            if len(c.level_weights) != len(sizes):
                raise InputError(f"level_weights has {len(c.level_weights)} weight(s) but the teacher {c.teacher.name} "
                                 f"has {len(sizes)} FPN levels: give one per level, coarse to fine (strides "
                                 f"{', '.join(str(size // n) for n in sizes)}), e.g. [1.0, 0.25, 0.125].")
            self.levels = [(f"fpn_stride{size // n}", float(w)) for n, w in zip(sizes, c.level_weights)]
        else:
            self.levels = [("embedding", 1.0)]
        self.cache = self._cache_dir()

    def dataset(self) -> DistillImages:
        c = self.config
        self.data = DistillImages(c.images, self.student.spec, self.teacher.spec, c.crop_scale, c.crop_ratio, c.seed,
                                  c.cache_views if c.teacher_cache else None, self.uint8_inputs, self.cache,
                                  [name for name, _ in self.levels])
        return self.data

    def _cache_dir(self) -> Path | None:
        c = self.config
        if not c.teacher_cache:
            return None
        from .data import training_images

        files = [str(p.relative_to(c.images)) for p in training_images(c.images)]
        key = json.dumps({"teacher": [c.teacher.name, c.teacher.checkpoint, c.teacher.kwargs, c.teacher.seed],
                          "size": self.teacher.spec.input_size, "crop": [c.crop_scale, c.crop_ratio], "seed": c.seed,
                          "views": c.cache_views, "files": files, "levels": [name for name, _ in self.levels]},
                         sort_keys=True)
        folder = Path(c.teacher_cache) / hashlib.sha256(key.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(key)
        return folder

    def teacher_embeddings(self, batch: dict) -> list[torch.Tensor]:
        """The teacher's levels for the batch (``distilled_levels``, coarse to fine), from the cache when it has
        them; each cache file holds one (image, view)'s levels by name, in fp16. The loader's workers read the
        cache (the batch's ``cached``: one entry per sample, None for a miss); a miss is looked up again here (a
        worker may have prepared the batch before this loop wrote its file), and the teacher runs on the rest."""
        names = [name for name, _ in self.levels]
        if self.cache is None:
            with torch.no_grad():
                return [t.float() for t in distilled_levels(self.teacher, self._input(batch, "teacher"))]
        cached = [self.data.cached(i, v) if saved is None else saved
                  for saved, i, v in zip(batch["cached"], batch["index"], batch["view"])]
        out = [None if saved is None else [t.to(self.device, non_blocking=True) for t in saved] for saved in cached]
        todo = [k for k, saved in enumerate(out) if saved is None]
        if todo:
            with torch.no_grad():
                levels = distilled_levels(self.teacher, self._input(batch, "teacher", todo))
            for j, k in enumerate(todo):
                out[k] = [t[j].half() for t in levels]  # the fp16 values a later epoch reads back
                save_torch_atomic({n: t.cpu().clone() for n, t in zip(names, out[k])},
                                  self.data.cache_path(batch["index"][k], batch["view"][k]))
        return [torch.stack([o[j] for o in out]).float() for j in range(len(names))]

    def loss(self, batch, step, rank, micro):
        targets = self.teacher_embeddings(batch)
        with self.autocast():
            student = distilled_levels(self.student, self._input(batch, "student"))
        if len(self.levels) == 1:
            loss = embedding_loss(self.config.loss, student[0], targets[0])
            return loss, {"loss": float(loss.detach())}
        values, total = {}, 0.0
        for (name, weight), s, t in zip(self.levels, student, targets, strict=True):
            if s.shape[1:] != t.shape[1:]:
                raise InputError(f"the student {self.config.student.name}'s {name} level is {tuple(s.shape[1:])} but "
                                 f"the teacher's is {tuple(t.shape[1:])}: the student's neck must produce the "
                                 f"teacher's levels (256 channels at strides 16, 8 and 4).")
            level = embedding_loss(self.config.loss, s, t)
            values[f"loss_{name}"] = float(level.detach())
            total = total + weight * level
        return total, {"loss": float(total.detach()), **values}


class _Prompted(Recipe):
    """Shared by the recipes that decode prompts sampled from ground-truth objects."""

    def dataset(self) -> CocoObjects:
        return self._coco()

    def _targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        ps = self.student.spec.prompt_size
        masks = batch["masks"]
        owner = [i for i, m in enumerate(masks) for _ in range(len(m))]
        # on the device: the prompts are sampled there as tensors (``train.prompts``), and the click rounds compare
        # these masks with the predictions there
        full = torch.zeros(sum(len(m) for m in masks), ps, ps, dtype=torch.bool, device=self.device)
        row = 0
        for m in masks:
            full[row:row + len(m), : m.shape[1], : m.shape[2]] = m.to(self.device, non_blocking=True)
            row += len(m)
        return full, batch["low_res"].to(self.device), owner

    @staticmethod
    def _decode(decoder: PromptDecoder, emb, coords, labels, mask_in, has_mask, tokens: bool = False):
        return decoder(emb, coords, labels, mask_in, has_mask, return_tokens=tokens)

    def _clicks(self, low: torch.Tensor, low_gt: torch.Tensor, gen: torch.Generator):
        """Error-region clicks from low-res logits (N x 256 x 256), mapped into the prompt frame. ``low_gt``: the
        batch's low-res targets (``_targets``: the ground truth area-downsampled in the workers)."""
        ps = self.student.spec.prompt_size
        scale = ps / low.shape[-1]
        coords, labels = error_clicks(low.detach() > 0, low_gt > 0.5, gen)
        return coords * scale, labels


class DistillFull(_Prompted):
    name = "distill-full"

    def setup(self) -> None:
        self.student.train()
        self.t_decoder = PromptDecoder(self.teacher)
        self.s_decoder = PromptDecoder(self.student)

    def loss(self, batch, step, rank, micro):
        c = self.config
        gen = as_generator(c.seed, step, rank, micro)
        full_gt, low_gt, owner = self._targets(batch)
        with torch.no_grad():
            t_emb = self.teacher.image_encoder(self._input(batch, "teacher")).float()
        with self.autocast():
            s_emb = self.student.image_encoder(self._input(batch, "student"))
        loss_emb = embedding_loss(c.loss, s_emb, t_emb)
        idx = torch.as_tensor(owner, device=self.device)
        coords, labels = first_prompts(full_gt, gen, c.box_jitter)
        n = len(owner)
        s_mask = torch.zeros(n, 1, *self.student.contract.mask_input_size, device=self.device)
        t_mask = torch.zeros_like(s_mask)
        has = torch.zeros(n, device=self.device)
        token_losses, mask_losses = [], []
        for r in range(c.prompt_rounds):
            cc, ll = coords.to(self.device), labels.to(self.device)
            with torch.no_grad():
                t_low, t_iou, t_tok = self._decode(self.t_decoder, t_emb[idx], cc, ll, t_mask, has, tokens=True)
            with self.autocast():
                s_low, s_iou, s_tok = self._decode(self.s_decoder, s_emb.float()[idx], cc, ll, s_mask, has, tokens=True)
            s_low, s_tok = s_low.float(), s_tok.float()
            # the output tokens, and the IoU predictions read from them (they choose the mask at inference)
            token_losses.append(torch.nn.functional.mse_loss(s_tok, t_tok)
                                + torch.nn.functional.mse_loss(s_iou.float(), t_iou))
            per_mask = (s_low - t_low).pow(2).flatten(2).mean(-1)  # N x 4
            if c.hard_mask_weighting:
                # hardness: how far the teacher's mask is from the ground truth (mean |sigmoid - gt|)
                hard = (torch.sigmoid(t_low) - low_gt[:, None]).abs().flatten(2).mean(-1)
                weight = (hard / hard.mean().clamp(min=1e-6)).detach()
                per_mask = per_mask * weight
            mask_losses.append(per_mask.mean())
            if r + 1 < c.prompt_rounds:
                best = s_iou.detach().argmax(dim=1)
                chosen = s_low.detach()[torch.arange(n), best]
                new_c, new_l = self._clicks(chosen, low_gt, gen)
                coords, labels = torch.cat([coords, new_c], 1), torch.cat([labels, new_l], 1)
                s_mask = chosen[:, None]
                t_mask = t_low[torch.arange(n), t_iou.argmax(dim=1)][:, None]
                has = torch.ones(n, device=self.device)
        loss_tok = torch.stack(token_losses).mean()
        loss_mask = torch.stack(mask_losses).mean()
        loss = c.embedding_weight * loss_emb + c.token_weight * loss_tok + c.mask_weight * loss_mask
        return loss, {"loss": float(loss.detach()), "embedding": float(loss_emb.detach()),
                      "tokens": float(loss_tok.detach()), "masks": float(loss_mask.detach())}


class TrainMasks(_Prompted):
    name = "train-masks"
    student_default = "official"

    def setup(self) -> None:
        for part in self.config.freeze:
            _freeze(getattr(self.student, part))
        for name in ("image_encoder", "prompt_encoder", "mask_decoder"):
            if name not in self.config.freeze:
                getattr(self.student, name).train()
        self.s_decoder = PromptDecoder(self.student)
        self.student.box_mask_prior = self.config.box_mask_prior

    def loss(self, batch, step, rank, micro):
        c = self.config
        gen = as_generator(c.seed, step, rank, micro)
        full_gt, low_gt, owner = self._targets(batch)
        idx = torch.as_tensor(owner, device=self.device)
        n = len(owner)
        with self.autocast():
            emb = self.student.image_encoder(self._input(batch, "student"))
        coords, labels = first_prompts(full_gt, gen, c.box_jitter)
        mask_in = torch.zeros(n, 1, *self.student.contract.mask_input_size, device=self.device)
        has = torch.zeros(n, device=self.device)
        if c.box_mask_prior:  # box prompts also enter as a box-shaped mask that the model refines
            is_box = (labels[:, 0] == 2).to(self.device)
            prior = box_prior_logits(coords.reshape(n, 4), self.student.spec.prompt_size,
                                     self.student.contract.mask_input_size).to(self.device)
            mask_in = torch.where(is_box[:, None, None, None], prior, mask_in)
            has = is_box.float()
        losses, ious = [], []
        for r in range(c.prompt_rounds):
            with self.autocast():
                low, iou = self._decode(self.s_decoder, emb.float()[idx], coords.to(self.device),
                                        labels.to(self.device), mask_in, has)
            low, iou = low.float(), iou.float()
            # SAM: a lone point is ambiguous, so the best of the 3 multimask outputs learns; otherwise output 0
            ambiguous = (labels[:, 0] == 1) & (labels[:, 1:] == -1).all(1) if labels.shape[1] > 1 else labels[:, 0] == 1
            ambiguous = ambiguous.to(self.device) & (r == 0)
            w = {"focal_weight": c.focal_weight, "dice_weight": c.dice_weight}
            loss_multi, best_multi = sam_mask_loss(low[:, 1:], iou[:, 1:], low_gt, **w)
            loss_single, _ = sam_mask_loss(low[:, :1], iou[:, :1], low_gt, **w)
            frac = ambiguous.float().mean()
            losses.append(frac * loss_multi + (1 - frac) * loss_single)
            chosen_idx = torch.where(ambiguous, best_multi + 1, torch.zeros_like(best_multi))
            chosen = low[torch.arange(n), chosen_idx]
            ious.append(logits_iou(chosen, low_gt).mean())
            if r + 1 < c.prompt_rounds:
                new_c, new_l = self._clicks(chosen, low_gt, gen)
                coords, labels = torch.cat([coords, new_c], 1), torch.cat([labels, new_l], 1)
                mask_in, has = chosen.detach()[:, None], torch.ones(n, device=self.device)
        loss = torch.stack(losses).mean()
        return loss, {"loss": float(loss.detach()), "train_iou": float(torch.stack(ious).mean())}


RECIPE_CLASSES = {cls.name: cls for cls in (DistillEncoder, DistillFull, TrainMasks)}


def make_recipe(config: TrainConfig, device: torch.device, autocast) -> Recipe:
    return RECIPE_CLASSES[config.recipe](config, device, autocast)
