"""PyTorch engine: eager, reduced precision, channels_last, torch.compile and CUDA graphs."""

from __future__ import annotations

import threading

import torch

from ..errors import EngineError, InputError
from ..modeling.prompt_decoder import PromptDecoder
from ..modeling.features import ImageFeatures
from ..modeling.segmenter import Segmenter
from ..runtime import PRECISIONS, autocast, tune_cpu_allocator
from .measured import default_channels_last
from .base import Engine
from .optimize import count_foldable, fold_batch_norms
from .static_decoder import CudaGraphDecoder, StaticShapeDecoder, cached_tensors

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TorchEngine(Engine):
    """The model's own modules.

    ``dtype`` (fp32 | fp16 | bf16) applies to the image encoder through autocast. ``decoder_dtype`` (fp32 |
    fp16 | bf16; default: ``dtype``, as the authors' code runs its decoder under autocast) is the mask
    decoder's: a copy of it cast once (``PromptDecoder``), since autocast would re-cast its weights on every
    call; the prompt encoder stays in fp32 (prompt coordinates lose whole pixels in 16-bit). On a CPU with bf16
    kernels (AVX512-BF16, AMX) a bf16 decoder is ~1.7x faster; its agreement with fp32 is measured in
    benchmarks/engines.md.
    ``channels_last`` (default: the layout measured faster for the model's family on its device in ``dtype``,
    ``engines.measured.CHANNELS_LAST``) runs the encoder on channels-last images.
    ``compile`` wraps the encoder in ``torch.compile`` (default mode with weight freezing, or
    ``compile_mode``; the first call compiles, which takes tens of seconds); ``cuda_graphs``
    captures the encoder for a fixed batch of 1 on a CUDA device and replays it, and the decoder once per
    prompt-count bucket (1, 2, 4, ... 64 prompts, padded: ``static_decoder``) and prompt shape. ``fold_bn``
    (default on) runs a copy of the encoder with every batch norm folded into its conv: exact up to
    float rounding, and 10-20% faster for the convolutional encoders on CPU. The folded copy is a
    snapshot: build a new engine (or Predictor) after changing the model's weights.
    """

    name = "torch"

    def __init__(
        self,
        model: Segmenter,
        dtype: str = "fp32",
        channels_last: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        cuda_graphs: bool = False,
        fold_bn: bool = True,
        decoder_dtype: str | None = None,
    ) -> None:
        super().__init__(model)
        if dtype not in PRECISIONS:
            raise EngineError(f"dtype must be one of {sorted(PRECISIONS)}, got {dtype!r}.")
        decoder_dtype = dtype if decoder_dtype is None else decoder_dtype
        if decoder_dtype not in PRECISIONS:
            raise EngineError(f"decoder_dtype must be one of {sorted(PRECISIONS)}, got {decoder_dtype!r}.")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise EngineError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}.")
        if cuda_graphs and model.device.type != "cuda":
            raise EngineError("cuda_graphs needs the model on a CUDA device (device='cuda').")
        if channels_last is None:  # the faster layout measured for this family, device and precision
            channels_last = default_channels_last(model, dtype)
        if model.device.type == "cpu":
            tune_cpu_allocator()  # large activations reuse heap pages instead of page-faulting every call
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = compile
        self.compile_mode = compile_mode
        self.cuda_graphs = cuda_graphs
        encoder = model.image_stage()
        self.folded_bn = fold_bn and not model.training and count_foldable(encoder) > 0
        if self.folded_bn:
            encoder = fold_batch_norms(encoder)
        if channels_last:
            encoder = encoder.to(memory_format=torch.channels_last)
        self._encoder = encoder
        if compile:
            if compile_mode in (None, "default"):
                # inference-only: fold weights and batch norms into the compiled graph
                self._encoder = torch.compile(encoder, options={"freezing": True})
            else:
                self._encoder = torch.compile(encoder, mode=compile_mode)
        self.decoder_dtype = decoder_dtype
        try:
            self._decoder = PromptDecoder(model, PRECISIONS[decoder_dtype])
        except InputError as e:
            raise EngineError(f"decoder_dtype={decoder_dtype!r}: {e}") from None
        # one image's features and 1+ prompts replay a captured graph; features per prompt (an image batch) are
        # large static inputs to keep per shape and decode eagerly
        self._graphs = StaticShapeDecoder(CudaGraphDecoder(self._decoder)) if cuda_graphs else None
        self._graph: tuple | None = None  # the encoder's CUDA graph, static input, outputs, caches it reads
        self._graph_lock = threading.Lock()
        self._decoder_input: tuple[ImageFeatures, tuple[torch.Tensor, ...]] | None = None  # see ``_decoder_levels``

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _run_encoder(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast(self.device, self.dtype):
            return tuple(t.float() for t in ImageFeatures.of(self._encoder(image)).levels)

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> ImageFeatures:
        image = image.to(self.device, torch.float32)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs and image.shape[0] == 1:
            with self._graph_lock, torch.cuda.device(image.device):  # one static input: one replay at a time
                return ImageFeatures.of(self._replay(image))
        return self.adopt(ImageFeatures.of(self._run_encoder(image)))

    def adopt(self, features: ImageFeatures) -> ImageFeatures:
        features = super().adopt(features)
        if self.device.type != "cpu":
            return features
        # the decoder reads the embedding as tokens (B x HW x C): in channels-last memory that is a view, where
        # NCHW memory costs a transposed copy on every decode call (~3 ms at 64 x 64 x 256 on one core), once here;
        # SAM 2's higher-resolution levels are read per pixel too (the upscaling's skips, channels innermost)
        return features.map(lambda t: t.contiguous(memory_format=torch.channels_last))

    def _replay(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._graph is None:
            static_in = image.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph, as CUDA graph capture requires
                    self._run_encoder(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run_encoder(static_in)
            # the graph reads the encoder's caches by address: they stay alive as long as it does
            self._graph = (graph, static_in, static_out, cached_tensors(self._encoder))
        graph, static_in, static_out, _ = self._graph
        static_in.copy_(image)
        graph.replay()
        return tuple(t.clone() for t in static_out)

    def _decoder_levels(self, features: ImageFeatures) -> tuple[torch.Tensor, ...]:
        """The feature levels on the device in the decoder's precision. The cast copy of the last features seen is
        kept: a Predictor decodes prompt after prompt against one image's features (features are read-only once
        made; a bf16 decoder would otherwise cast 1M floats per call, SAM 2's high-resolution levels 3M more)."""
        kept = self._decoder_input  # read once: another thread (a server) may replace it meanwhile
        if kept is not None and kept[0] is features:
            return kept[1]
        levels = tuple(t.to(self.device, self._decoder.dtype) for t in features.levels)
        if features.embedding.shape[0] == 1:  # not features gathered per prompt (large, used once)
            self._decoder_input = (features, levels)
        return levels

    @torch.inference_mode()
    def decode(self, features, point_coords, point_labels, mask_input, has_mask_input):
        dev = self.device
        embedding, *high_res = self._decoder_levels(ImageFeatures.of(features))
        graphs = self._graphs is not None and embedding.shape[0] == 1 and point_coords.shape[0] > 0
        return tuple((self._graphs if graphs else self._decoder)(
            embedding, point_coords.to(dev, torch.float32), point_labels.to(dev, torch.float32),
            mask_input.to(dev, torch.float32), has_mask_input.to(dev, torch.float32), *high_res,
        ))

    def describe(self) -> str:
        extras = [self.dtype] + ([f"decoder {self.decoder_dtype}"] if self.decoder_dtype != self.dtype else []) + (
            ["channels_last"] if self.channels_last else [])
        if self.folded_bn:
            extras.append("folded_bn")
        if self.compiled:
            extras.append(f"compile({self.compile_mode or 'default'})")
        if self.cuda_graphs:
            extras.append("cuda_graphs")
        return f"torch[{', '.join(extras)}] on {self.device}"
