"""The model registry: one entry per named model (builder, image spec, official weights)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ModelNotFoundError
from ..modeling.sam import ImageSpec, Sam


@dataclass(frozen=True)
class Weights:
    """An official checkpoint: where it lives and how to check it."""

    filename: str
    urls: tuple[str, ...]  # the authors' URL first, then mirrors
    # None: the authors publish no hash (and the file was not available to hash): the download cache pins the
    # file's sha256 and size on first download (swiftsam.zoo.hub), and every later download must match them
    sha256: str | None
    size_mb: float | None = None  # approximate, for display only; sha256 is the check
    size_bytes: int | None = None  # exact, where known: a download of another size is refused


@dataclass(frozen=True)
class Bundled:
    """Weights that ship inside the package (``swiftsam/weights/``): loaded without a download.

    A model's state dict is the union of its files (models that share a part, e.g. a distilled student
    and its teacher's mask decoder, share that file)."""

    files: tuple[str, ...]
    sha256: tuple[str, ...]
    # (prefix in the files, prefix in the model): a model that reuses another's files under other module names
    # (swiftsam-r18-video keeps the image model's decoder file: mask_decoder.* -> sam_mask_decoder.*)
    rename: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if len(self.files) != len(self.sha256):
            raise ValueError("Bundled: one sha256 per file")


# the MaskGenerator settings a model can carry defaults for (swiftsam.everything.SAM_DEFAULTS has them all)
EVERYTHING_KEYS = frozenset({"points_per_side", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
                             "high_score_thresh"})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., Sam]
    spec: ImageSpec
    description: str
    weights: Weights | None = None
    # checkpoint keys (prefixes) that belong to the authors' training code, not to the model
    ignore_keys: tuple[str, ...] = ()
    # the single-mask output token was never trained (TinySAM): take the best of the 3 instead
    multimask_only: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # reads a checkpoint that is not a state dict (Q-TinySAM's pickled module) into a ready model:
    # loader(path, build), where build() returns this entry's model as swiftsam.build makes it (the API passes it)
    loader: Callable[[str, Callable[[], Sam]], Sam] | None = None
    # weights kept in the package (the project's own models), instead of an official download
    bundled: Bundled | None = None
    # trained with box prompts also given as box-shaped mask inputs (TrainConfig.box_mask_prior)
    box_mask_prior: bool = False
    # where to get weights when there is no official checkpoint (shown in the "pass checkpoint=" error)
    weights_note: str = ""
    # segment-everything defaults calibrated for these weights (MaskGenerator keyword -> value, e.g.
    # pred_iou_thresh); None: SAM's (swiftsam.everything.SAM_DEFAULTS). Attached as model.everything_defaults.
    everything: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        unknown = set(self.everything or {}) - EVERYTHING_KEYS
        if unknown:
            raise ValueError(f"{self.name}: unknown everything default(s) {sorted(unknown)}; "
                             f"choose from {sorted(EVERYTHING_KEYS)}")

    @property
    def takes_input_size(self) -> bool:
        """Whether the builder takes ``input_size`` (convolutional students: NanoSAM, swiftsam's own)."""
        return "input_size" in inspect.signature(self.builder).parameters

    def policy(self) -> dict:
        """The entry's fields of the model contract (``ModelContract.replace`` keywords)."""
        return {"multimask_only": self.multimask_only, "box_mask_prior": self.box_mask_prior,
                "everything": dict(self.everything or {})}

    def build(self, **kwargs) -> Sam:
        """A model with freshly initialised weights."""
        return self.builder(**kwargs)


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name
    return entry


def get_entry(name: str) -> ModelEntry:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise ModelNotFoundError(
            f"unknown model {name!r}. Known models: {', '.join(list_models())} (see `swiftsam models`)."
        )
    return _REGISTRY[key]


def list_models() -> list[str]:
    return list(_REGISTRY)
