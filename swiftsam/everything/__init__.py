"""Segment everything: automatic masks from point grids, hierarchical grids or detector boxes."""

from .generator import SAM_DEFAULTS, STRATEGIES, GenerationStats, MaskGenerator, NoMasksWarning, model_defaults
from .nms import batched_nms, box_iou, nms

__all__ = ["SAM_DEFAULTS", "STRATEGIES", "GenerationStats", "MaskGenerator", "NoMasksWarning", "batched_nms", "box_iou",
           "model_defaults", "nms"]
