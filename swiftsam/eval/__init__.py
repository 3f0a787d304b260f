"""Accuracy protocols: COCO box / point / detections (``swiftsam eval coco``), LVIS mask AP (``eval lvis``)."""

from .clicker import Clicker
from .coco import BOX_VARIANTS, POINT_VARIANTS, PROTOCOLS, evaluate_coco, format_summary, load_detections
from .dataset import CocoImages
from .lvis import LvisImages, evaluate_lvis, lvis_segm_ap
from .metrics import mask_iou, miou_table, size_bins
from .segmenters import BASELINES, BoxFillSegmenter, GrabCutSegmenter, OracleSegmenter, PredictorSegmenter, box_fill

__all__ = [
    "BASELINES", "BOX_VARIANTS", "POINT_VARIANTS", "PROTOCOLS", "BoxFillSegmenter", "Clicker", "CocoImages",
    "GrabCutSegmenter", "LvisImages", "OracleSegmenter", "PredictorSegmenter", "box_fill", "evaluate_coco",
    "evaluate_lvis", "format_summary", "load_detections", "lvis_segm_ap", "mask_iou", "miou_table", "size_bins",
]
