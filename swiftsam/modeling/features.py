"""What an image encoder produces: named feature levels, the image embedding first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .contract import FeatureInfo


@dataclass(frozen=True)
class ImageFeatures:
    """The image embedding the mask decoder attends to, plus any higher-resolution levels (SAM 2's
    ``high_res_feats``), in the order of the model contract's ``features``."""

    embedding: torch.Tensor
    high_res: tuple[torch.Tensor, ...] = ()

    @classmethod
    def from_encoder(cls, out: torch.Tensor | tuple | list, layout: tuple[FeatureInfo, ...]) -> ImageFeatures:
        levels = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if len(levels) != len(layout):
            raise ValueError(f"the encoder returned {len(levels)} feature level(s), its layout declares {len(layout)}")
        for t, f in zip(levels, layout):
            if t.shape[1:] != (f.channels, f.size, f.size):
                raise ValueError(f"feature {f.name} has shape {tuple(t.shape[1:])}, its layout declares "
                                 f"{(f.channels, f.size, f.size)}")
        return cls(levels[0], levels[1:])

    @classmethod
    def of(cls, value: ImageFeatures | torch.Tensor | tuple | list) -> ImageFeatures:
        """Features as given: an ``ImageFeatures``, a lone embedding tensor (SAM 1), or the levels in order."""
        if isinstance(value, ImageFeatures):
            return value
        if isinstance(value, torch.Tensor):
            return cls(value)
        levels = tuple(value)
        return cls(levels[0], levels[1:])

    @property
    def levels(self) -> tuple[torch.Tensor, ...]:
        """Every level, in the contract's order (the embedding first)."""
        return (self.embedding, *self.high_res)

    @property
    def batch(self) -> int:
        return self.embedding.shape[0]

    def map(self, fn) -> ImageFeatures:
        """The same levels, each through ``fn`` (e.g. ``lambda t: t.to(device)`` or ``lambda t: t[i:i + 1]``)."""
        return ImageFeatures(fn(self.embedding), tuple(fn(t) for t in self.high_res))

    def as_dict(self, layout: tuple[FeatureInfo, ...]) -> dict[str, torch.Tensor]:
        """Named levels, e.g. for an exported encoder's outputs."""
        return {f.name: t for f, t in zip(layout, (self.embedding, *self.high_res))}
