"""The model contract: everything that runs a model needs to know about it, besides its weights.

A ``ModelContract`` travels with the weights: ``Sam.contract`` holds it, swiftsam's checkpoints, embedding
files and export manifests record it (``to_dict``), and ``from_dict`` restores it, so a Predictor built from
an export folder behaves exactly like the torch model it came from.

It says how the image is prepared (``ImageSpec``: geometry, sizes, pixel mean/std), what the image encoder
produces (``FeatureInfo`` per level, timm's ``feature_info`` idea), the mask-input size of the prompt side,
and the model's output policy (``multimask_only``, ``box_mask_prior``) and everything-mode defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
# SAM 2 normalises with ImageNet's mean / std (given here in 0..255 units like SAM's)
IMAGENET_PIXEL_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_PIXEL_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CONTRACT_FORMAT = "swiftsam-contract/1"
# SAM 1: resize the longer side to input_size, pad bottom/right; SAM 2: resize to input_size x input_size (the
# aspect ratio changes; prompts scale per axis; masks need no crop)
GEOMETRIES = ("longest_side_pad", "square")


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its image: a property of the model, never of the caller."""

    input_size: int = 1024  # side of the square the encoder sees (after resize + pad)
    prompt_size: int = 1024  # side of the frame prompts and masks live in
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN  # in 0..255 units
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    geometry: str = "longest_side_pad"

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"unknown image geometry {self.geometry!r}; known: {', '.join(GEOMETRIES)}")


@dataclass(frozen=True)
class FeatureInfo:
    """One level of an image encoder's output: its name, channels and size relative to the encoder input.

    ``size`` is the side of the (square) feature map for the encoder's input size; ``reduction`` is
    ``input_size / size`` (timm's name), derived from it.
    """

    name: str
    channels: int
    size: int

    def reduction(self, input_size: int) -> float:
        return input_size / self.size


# SAM 1's one level: a 256 x 64 x 64 image embedding, whatever the encoder's input size
SAM_FEATURES = (FeatureInfo("image_embeddings", 256, 64),)


@dataclass(frozen=True)
class ModelContract:
    """What a runtime needs besides the weights: image spec, feature layout, prompt sizes, output policy."""

    name: str | None = None  # zoo name (None: a model built by hand)
    image: ImageSpec = ImageSpec()
    features: tuple[FeatureInfo, ...] = SAM_FEATURES  # the first level is the embedding the decoder attends to
    mask_input_size: tuple[int, int] = (256, 256)  # low-res mask prompts and logits (4x the embedding)
    # the single-mask output token was never trained (TinySAM): single-mask requests take the best of 1..3
    multimask_only: bool = False
    # trained with box prompts also given as box-shaped mask inputs (swiftsam's own models)
    box_mask_prior: bool = False
    # SAM 2's single-mask rule: keep token 0 when its logits are stable (area above +delta / area above -delta
    # >= thresh), else the best of tokens 1..3 by predicted IoU
    dynamic_multimask: bool = False
    dynamic_multimask_delta: float = 0.05
    dynamic_multimask_thresh: float = 0.98
    # SAM 2's prompt format: the box goes in as its two corner points ahead of the clicks, and every point
    # prompt (box included) ends with one padding point
    box_as_points: bool = False
    # SAM 2's decoder also predicts whether the object is present (one logit per prompt: ``object_score_logits``)
    object_score: bool = False
    # SAM 2 returns low-res logits clamped to +-this (masks are upsampled from the unclamped ones); None: no clamp
    low_res_clamp: float | None = None
    # MaskGenerator defaults calibrated for these weights (swiftsam.everything.SAM_DEFAULTS otherwise)
    everything: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def embedding(self) -> FeatureInfo:
        return self.features[0]

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """C x H x W of the image embedding the mask decoder attends to."""
        e = self.embedding
        return (e.channels, e.size, e.size)

    @property
    def everything_defaults(self) -> dict[str, Any]:
        return dict(self.everything)

    def output_policy(self) -> dict[str, Any]:
        """``prompt_decoder.choose_outputs``'s keywords for this model."""
        dynamic = (self.dynamic_multimask_delta, self.dynamic_multimask_thresh) if self.dynamic_multimask else None
        return {"multimask_only": self.multimask_only, "dynamic_multimask": dynamic}

    def replace(self, **changes: Any) -> ModelContract:
        if "everything" in changes and isinstance(changes["everything"], dict):
            changes["everything"] = tuple(sorted(changes["everything"].items()))
        if "image" in changes and isinstance(changes["image"], dict):
            changes["image"] = _image_spec(changes["image"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (manifests) and ``weights_only``-loadable (checkpoints): plain types only."""
        return {
            "format": CONTRACT_FORMAT,
            "name": self.name,
            "image": {"input_size": self.image.input_size, "prompt_size": self.image.prompt_size,
                      "pixel_mean": list(self.image.pixel_mean), "pixel_std": list(self.image.pixel_std),
                      "geometry": self.image.geometry},
            "features": [{"name": f.name, "channels": f.channels, "size": f.size} for f in self.features],
            "mask_input_size": list(self.mask_input_size),
            "multimask_only": self.multimask_only,
            "box_mask_prior": self.box_mask_prior,
            "dynamic_multimask": [self.dynamic_multimask, self.dynamic_multimask_delta, self.dynamic_multimask_thresh],
            "everything": dict(self.everything),
            "box_as_points": self.box_as_points,
            "object_score": self.object_score,
            "low_res_clamp": self.low_res_clamp,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        """Inverse of :meth:`to_dict`; raises ValueError on a record that is not a contract."""
        if not isinstance(data, dict) or data.get("format") != CONTRACT_FORMAT:
            raise ValueError(f"not a swiftsam model contract ({CONTRACT_FORMAT})")
        try:
            return cls(
                name=data.get("name"),
                image=_image_spec(data["image"]),
                features=tuple(FeatureInfo(str(f["name"]), int(f["channels"]), int(f["size"]))
                               for f in data["features"]),
                mask_input_size=tuple(int(v) for v in data["mask_input_size"]),
                multimask_only=bool(data.get("multimask_only", False)),
                box_mask_prior=bool(data.get("box_mask_prior", False)),
                **_dynamic(data.get("dynamic_multimask")),
                everything=tuple(sorted((str(k), v) for k, v in (data.get("everything") or {}).items())),
                box_as_points=bool(data.get("box_as_points", False)),
                object_score=bool(data.get("object_score", False)),
                low_res_clamp=None if data.get("low_res_clamp") is None else float(data["low_res_clamp"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"damaged swiftsam model contract: {e}") from None


def _image_spec(d: dict[str, Any]) -> ImageSpec:
    return ImageSpec(input_size=int(d["input_size"]), prompt_size=int(d["prompt_size"]),
                     pixel_mean=tuple(float(v) for v in d["pixel_mean"]),
                     pixel_std=tuple(float(v) for v in d["pixel_std"]),
                     geometry=str(d.get("geometry", "longest_side_pad")))


def _dynamic(record: list | None) -> dict[str, Any]:
    if record is None:
        return {}
    on, delta, thresh = record
    return {"dynamic_multimask": bool(on), "dynamic_multimask_delta": float(delta),
            "dynamic_multimask_thresh": float(thresh)}
