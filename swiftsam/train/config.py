"""Training configuration: one dataclass, read from YAML and/or command-line flags."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError
from ..zoo import get_entry

RECIPES = ("distill-encoder", "distill-full", "train-masks")
LOSSES = ("huber", "mse", "l1")
SCHEDULES = ("constant", "cosine")
AMP = ("none", "bf16", "fp16")
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass
class ModelSpec:
    """A zoo model: ``checkpoint`` is a file, ``official`` (download / cache), ``random`` (fresh
    initialisation from ``seed``: for experiments and tests, e.g. a random-weight teacher) or ``auto``."""

    name: str
    checkpoint: str = "auto"  # auto: official for teachers and train-masks students, random for distilled students
    kwargs: dict = field(default_factory=dict)  # builder arguments, e.g. {input_size: 512}
    seed: int = 0

    @classmethod
    def parse(cls, value: object, what: str) -> ModelSpec | None:
        if value is None or isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, dict):
            unknown = set(value) - {"name", "checkpoint", "kwargs", "seed"}
            if "name" not in value or unknown:
                raise InputError(f"{what}: expected a zoo name or {{name, checkpoint, kwargs, seed}}, got {value!r}.")
            return cls(**value)
        raise InputError(f"{what}: expected a zoo name or a mapping, got {type(value).__name__}.")


@dataclass
class TrainConfig:
    recipe: str
    student: ModelSpec
    out: str
    teacher: ModelSpec | None = None
    # data: an image folder (distill-encoder) or a COCO instances file with its image folder
    images: str | None = None
    annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    # optimisation (NanoSAM's defaults: Adam 3e-4, batch 16)
    steps: int = 1000
    batch_size: int = 16  # per process
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup_steps: int = 0
    amp: str = "none"
    loss: str = "huber"  # embedding loss
    # augmentation (distill-encoder): RandomResizedCrop scale and aspect-ratio ranges
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    # teacher-embedding cache (distill-encoder): fp16 files, one per image and view
    teacher_cache: str | None = None
    cache_views: int = 1  # crops per image that the cache keeps (epoch e uses view e % cache_views)
    # distill-encoder with a SAM 2.1 teacher: the weight of each FPN level's loss, coarse to fine (strides 16, 8, 4;
    # nanosam2's 1, 1/4, 1/8). The levels are the neck's raw outputs (``backbone_fpn``), which the memory encoder
    # (stride 16) and, through the teacher's conv_s0 / conv_s1 and no_mem_embed, the decoder read. The cache keeps
    # every level in fp16: 2 * 256 * (S/4)^2 * 21/16 bytes per view (S=1024: 44 MB; S=512: 11 MB)
    level_weights: list[float] = field(default_factory=lambda: [1.0, 0.25, 0.125])
    # prompts (distill-full, train-masks)
    objects_per_image: int = 4
    prompt_rounds: int = 3  # round 0: box or point from the ground truth; later rounds: error-region clicks
    box_jitter: float = 0.1  # box corners move by up to this fraction of the box side
    hard_mask_weighting: bool = True  # distill-full: weigh masks by how far the teacher is from the ground truth
    token_weight: float = 1.0
    mask_weight: float = 1.0
    embedding_weight: float = 1.0
    freeze: list[str] = field(default_factory=list)  # train-masks: parts kept frozen
    # distillation: the student's image encoder starts from every teacher tensor with the same name and shape
    # (a ResNet34 teacher gives a ResNet18 student its stem, the first two blocks of each stage and the neck:
    # our stand-in for NanoSAM's ImageNet initialisation, which cannot be downloaded here)
    init_from_teacher: bool = False
    # train-masks: SAM's mask loss weights (focal:dice 20:1); from scratch a lower focal weight avoids the
    # all-background solution that a 20x focal term (alpha 0.25) makes cheap
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    # train-masks: every box prompt also enters as a box-shaped mask prior (prompts.box_prior_logits), which the
    # model learns to refine; the trained model must be run with model.box_mask_prior = True (the Predictor
    # then adds the prior itself)
    box_mask_prior: bool = False
    # quantization-aware training: the student's image encoder runs fake-quantized W8A8 while it learns
    quantize: str = "none"  # none | qat
    qat_calibration: int = 16  # images that set the initial activation ranges (min-max)
    # bookkeeping
    checkpoint_every: int = 500
    eval_every: int = 0  # 0: evaluate at the end only (when a validation set is given)
    eval_images: int = 50
    log_every: int = 10
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.student = ModelSpec.parse(self.student, "student")
        self.teacher = ModelSpec.parse(self.teacher, "teacher")
        self.crop_scale = tuple(self.crop_scale)
        self.crop_ratio = tuple(self.crop_ratio)
        self.freeze = list(self.freeze)
        if isinstance(self.level_weights, (list, tuple)):
            self.level_weights = list(self.level_weights)

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        need(self.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}.")
        get_entry(self.student.name)
        if self.teacher is not None:
            get_entry(self.teacher.name)
        need(self.recipe == "train-masks" or self.teacher is not None,
             f"{self.recipe} needs a teacher (teacher: mobilesam).")
        need(not self.init_from_teacher or self.teacher is not None,
             "init_from_teacher needs a teacher (teacher: NAME).")
        need(self.images is not None, "give the training images (images: FOLDER).")
        need(self.recipe == "distill-encoder" or self.annotations is not None,
             f"{self.recipe} needs COCO-format annotations (annotations: instances.json).")
        need((self.val_images is None) == (self.val_annotations is None),
             "give both val_images and val_annotations, or neither.")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "objects_per_image",
                     "prompt_rounds", "cache_views", "eval_images"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}.")
        need(self.eval_every >= 0 and self.warmup_steps >= 0 and self.workers >= 0,
             "eval_every, warmup_steps and workers must be >= 0.")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}.")
        need(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}.")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")
        need(self.amp in AMP, f"amp must be one of {', '.join(AMP)}, got {self.amp!r}.")
        need(self.focal_weight >= 0 and self.dice_weight >= 0 and self.focal_weight + self.dice_weight > 0,
             "focal_weight and dice_weight must be >= 0, not both 0.")
        need(not self.box_mask_prior or self.recipe == "train-masks", "box_mask_prior is a train-masks setting.")
        need(self.quantize in ("none", "qat"), f"quantize must be none or qat, got {self.quantize!r}.")
        need(self.qat_calibration >= 1, f"qat_calibration must be >= 1, got {self.qat_calibration}.")
        need(self.optimizer in ("adam", "adamw"), f"optimizer must be adam or adamw, got {self.optimizer!r}.")
        need(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, f"crop_scale must be 0 < lo <= hi <= 1, got {self.crop_scale}.")
        need(0 < self.crop_ratio[0] <= self.crop_ratio[1], f"crop_ratio must be 0 < lo <= hi, got {self.crop_ratio}.")
        need(isinstance(self.level_weights, list) and len(self.level_weights) >= 1
             and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in self.level_weights)
             and sum(self.level_weights) > 0,
             f"level_weights must be a list of numbers >= 0 (not all 0), one per FPN level coarse to fine, "
             f"e.g. [1.0, 0.25, 0.125]; got {self.level_weights!r}.")
        bad = [p for p in self.freeze if p not in PARTS]
        need(not bad, f"freeze: unknown part {', '.join(bad)}; choose from {', '.join(PARTS)}.")
        need(len(self.freeze) < len(PARTS), "freeze: every part is frozen, nothing would train.")
        for path in (self.images, self.val_images):
            need(path is None or Path(path).is_dir(), f"image folder not found: {path}")
        for path in (self.annotations, self.val_annotations):
            need(path is None or Path(path).is_file(), f"annotation file not found: {path}")

    @classmethod
    def defaults(cls) -> dict:
        """The settings that have a default, as ``as_dict`` writes them."""
        import json
        from dataclasses import MISSING

        out = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return json.loads(json.dumps(out))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["crop_scale"], d["crop_ratio"] = list(self.crop_scale), list(self.crop_ratio)
        return d


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict | None = None) -> TrainConfig:
    """A config from a YAML file (if given) with ``overrides`` (e.g. from flags) applied on top."""
    data: dict = {}
    if path is not None:
        try:
            import yaml
        except ImportError:
            raise InputError("reading a YAML config needs PyYAML: pip install 'swiftsam[train]'.") from None
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"{p}: expected a mapping of settings at the top level.")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise InputError(f"unknown setting {', '.join(unknown)}; known: {', '.join(field_names())}.")
    missing = [k for k in ("recipe", "student", "out") if k not in data]
    if missing:
        raise InputError(f"missing setting {', '.join(missing)} (in the YAML file or as --{missing[0]}).")
    try:
        config = TrainConfig(**data)
    except TypeError as e:
        raise InputError(f"bad config: {e}") from None
    config.validate()
    return config
