"""A model's stages: the graphs an engine runs, with named inputs and outputs and their dynamic axes.

Export traces one graph per stage, engines run stages by name, and TensorRT's optimisation profiles are
made from the same shapes, so no I/O table is written twice. Shapes come from the model contract
(``modeling.contract.ModelContract``): nothing here assumes SAM 1's 256 x 64 x 64 embedding.

SAM 1 models have ``encode`` (image -> embedding) and ``decode`` (embedding + SAM's flat prompts -> all 4
output tokens); ``sam_decode`` is SAM's published single-image ONNX decoder interface. SAM 2 adds levels to
``encode``'s outputs and memory stages beside these.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import ModelContract

# SAM's flat prompt ABI, spelled once: the decoder's inputs (the image embedding, then the four prompt tensors)
# and outputs, in this order, for every engine, exported graph and ``prompts.PromptBatch``
PROMPT_INPUTS = ("point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_INPUTS = ("image_embeddings", *PROMPT_INPUTS)
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")

Dim = int | str  # a fixed size, or the name of a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class Stage:
    """One graph: named inputs and outputs, each with fixed sizes and named dynamic axes."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes``: tensor name -> {axis: axis name}."""
        axes = {}
        for t in (*self.inputs, *self.outputs):
            named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if named:
                axes[t.name] = named
        return axes

    def input_shapes(self, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes with each dynamic axis set from ``sizes`` (axis name -> size)."""
        try:
            return {t.name: tuple(sizes[d] if isinstance(d, str) else d for d in t.shape) for t in self.inputs}
        except KeyError as e:
            raise ValueError(f"stage {self.name}: no size for dynamic axis {e}") from None


def sam_stages(contract: ModelContract, sam_single_mask: bool = False) -> dict[str, Stage]:
    """The stages of a SAM 1 model with this contract (``sam_single_mask``: ``sam_decode`` returns one mask)."""
    s = contract.image.input_size
    c, g, _ = contract.embedding_shape
    mh, mw = contract.mask_input_size

    n_masks = 1 if sam_single_mask else 4

    def embedding(batch: Dim) -> TensorSpec:
        return TensorSpec("image_embeddings", (batch, c, g, g))

    def prompts(batch: Dim, points: Dim) -> tuple[TensorSpec, ...]:
        shapes = ((batch, points, 2), (batch, points), (batch, 1, mh, mw), (batch,))
        return tuple(TensorSpec(n, shape) for n, shape in zip(PROMPT_INPUTS, shapes, strict=True))

    return {
        "encode": Stage("encode", (TensorSpec("image", ("batch", 3, s, s)),), (embedding("batch"),)),
        "decode": Stage(  # SAM's flat prompt ABI (modeling.prompt_decoder): all 4 output tokens
            "decode",
            (embedding("embedding_batch"), *prompts("prompts", "points")),
            tuple(TensorSpec(n, shape) for n, shape in zip(
                DECODER_OUTPUTS, (("prompts", 4, mh, mw), ("prompts", 4)), strict=True)),
        ),
        "sam_decode": Stage(  # SAM's published ONNX decoder interface: one image, one prompt
            "sam_decode",
            (embedding(1), *prompts(1, "points"), TensorSpec("orig_im_size", (2,))),
            (TensorSpec("masks", (1, n_masks, "height", "width")),
             TensorSpec("iou_predictions", (1, n_masks)),
             TensorSpec("low_res_masks", (1, n_masks, mh, mw))),
        ),
    }
