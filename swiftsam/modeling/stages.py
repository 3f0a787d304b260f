"""A model's stages: the graphs an engine runs, with named inputs and outputs and their dynamic axes.

Export traces one graph per stage, engines run stages by name, and TensorRT's optimisation profiles are
made from the same shapes, so no I/O table is written twice. Shapes come from the model contract
(``modeling.contract.ModelContract``): nothing here assumes SAM 1's 256 x 64 x 64 embedding.

SAM 1 models have ``encode`` (image -> embedding) and ``decode`` (embedding + SAM's flat prompts -> all 4
output tokens); ``sam_decode`` is SAM's published single-image ONNX decoder interface. SAM 2 adds levels to
``encode``'s outputs (and to the decoders' inputs, after the prompts) and the object score to ``decode``'s.
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


OBJECT_SCORE_OUTPUT = "object_score_logits"  # SAM 2's decoders: one logit per prompt, the object is present


def sam_stages(contract: ModelContract, sam_single_mask: bool = False) -> dict[str, Stage]:
    """The stages of a model with this contract (``sam_single_mask``: ``sam_decode`` returns one mask).

    ``encode`` outputs every feature level of the contract (SAM 1: ``image_embeddings``; SAM 2: ``image_embed``,
    ``high_res_feats_0``, ``high_res_feats_1``); the decoders take the embedding, SAM's flat prompts, then the
    higher-resolution levels, and SAM 2's ``decode`` also returns the object score."""
    s = contract.image.input_size
    mh, mw = contract.mask_input_size

    n_masks = 1 if sam_single_mask else 4

    def levels(batch: Dim) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(f.name, (batch, f.channels, f.size, f.size)) for f in contract.features)

    def prompts(batch: Dim, points: Dim) -> tuple[TensorSpec, ...]:
        shapes = ((batch, points, 2), (batch, points), (batch, 1, mh, mw), (batch,))
        return tuple(TensorSpec(n, shape) for n, shape in zip(PROMPT_INPUTS, shapes, strict=True))

    def decoder_inputs(batch: Dim, prompt_batch: Dim) -> tuple[TensorSpec, ...]:
        embedding, *high_res = levels(batch)
        return (embedding, *prompts(prompt_batch, "points"), *high_res)

    decode_outputs = tuple(TensorSpec(n, shape) for n, shape in zip(
        DECODER_OUTPUTS, (("prompts", 4, mh, mw), ("prompts", 4)), strict=True))
    if contract.object_score:
        decode_outputs += (TensorSpec(OBJECT_SCORE_OUTPUT, ("prompts", 1)),)
    return {
        "encode": Stage("encode", (TensorSpec("image", ("batch", 3, s, s)),), levels("batch")),
        # SAM's flat prompt ABI (modeling.prompt_decoder): all 4 output tokens
        "decode": Stage("decode", decoder_inputs("embedding_batch", "prompts"), decode_outputs),
        "sam_decode": Stage(  # SAM's published ONNX decoder interface (SAM 2's as samexporter / X-AnyLabeling)
            "sam_decode",
            (*decoder_inputs(1, 1), TensorSpec("orig_im_size", (2,))),
            (TensorSpec("masks", (1, n_masks, "height", "width")),
             TensorSpec("iou_predictions", (1, n_masks)),
             TensorSpec("low_res_masks", (1, n_masks, mh, mw))),
        ),
    }
