"""Accuracy protocols: COCO box / point / detections (``swiftsam eval coco``)."""

from .clicker import Clicker
from .coco import BOX_VARIANTS, POINT_VARIANTS, PROTOCOLS, evaluate_coco, format_summary, load_detections
from .dataset import CocoImages
from .metrics import mask_iou, miou_table, size_bins
from .segmenters import BASELINES, BoxFillSegmenter, GrabCutSegmenter, OracleSegmenter, PredictorSegmenter, box_fill

__all__ = [
    "BASELINES", "BOX_VARIANTS", "POINT_VARIANTS", "PROTOCOLS", "BoxFillSegmenter", "Clicker", "CocoImages",
    "GrabCutSegmenter", "OracleSegmenter", "PredictorSegmenter", "box_fill", "evaluate_coco", "format_summary", "load_detections",
    "mask_iou", "miou_table", "size_bins",
]
