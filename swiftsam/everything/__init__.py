"""Segment everything: automatic masks from point grids, hierarchical grids or detector boxes."""

from .generator import STRATEGIES, GenerationStats, MaskGenerator
from .nms import batched_nms, box_iou, nms

__all__ = ["STRATEGIES", "GenerationStats", "MaskGenerator", "batched_nms", "box_iou", "nms"]
