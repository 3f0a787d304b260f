"""Detectors that give ``swiftsam label`` its boxes: OpenCV's Haar cascades (in the opencv wheel: offline, no
download) and adapters for detectors the user already has (an ultralytics YOLO weights file, a transformers
OWL-ViT or Grounding DINO model with text prompts). Each loads its package only when asked; a missing package
is a ``MissingDependencyError`` saying what to install, a missing weights file an ``InputError``.

A detector is ``detect(image: H x W x 3 uint8 RGB) -> Detections`` with a ``name``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..optional import MissingDependencyError, require
from .detections import Detections

HAAR_CASCADES = {"haar-fullbody": "haarcascade_fullbody.xml", "haar-face": "haarcascade_frontalface_default.xml"}
ADAPTERS = ("yolo", "owlvit", "grounding-dino")
DETECTOR_HELP = ("haar-fullbody | haar-face (OpenCV's cascades, offline) | yolo:WEIGHTS.pt (ultralytics) | "
                 "owlvit:MODEL_ID | grounding-dino:MODEL_ID (transformers; with --text)")


class HaarDetector:
    """OpenCV's Haar cascade (``cv2.data.haarcascades``, in OpenCV 4's wheels; OpenCV 5 has none): a weak, fast,
    offline example detector. Scores are the
    cascade's last-stage weights squashed into (0, 1) by a logistic; the category id is ``category_id``."""

    def __init__(self, name: str = "haar-fullbody", category_id: int = 1, scale_factor: float = 1.05,
                 min_neighbors: int = 3, max_side: int = 640) -> None:
        if name not in HAAR_CASCADES:
            raise InputError(f"unknown Haar cascade {name!r}: one of {', '.join(HAAR_CASCADES)}.")
        cv2 = require("cv2", f"the {name} detector")
        path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / HAAR_CASCADES[name]
        if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
            # OpenCV 5 moved the cascades out of its main wheels (the objdetect module lost them)
            raise MissingDependencyError(
                f"the {name} detector needs OpenCV's Haar cascades, which OpenCV {cv2.__version__} does not ship: "
                f"pip install 'opencv-python-headless<5' (4.x has them), or give --detections from another detector.")
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise InputError(f"OpenCV could not load its cascade {path}: reinstall opencv-python-headless.")
        self.cv2, self.name, self.category_id = cv2, name, category_id
        self.scale_factor, self.min_neighbors, self.max_side = scale_factor, min_neighbors, max_side

    def detect(self, image: np.ndarray) -> Detections:
        cv2 = self.cv2
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(gray.shape))  # large images: detect on a smaller copy
        if scale < 1.0:
            gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                              interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        rects, _, weights = self.cascade.detectMultiScale3(gray, scaleFactor=self.scale_factor,
                                                           minNeighbors=self.min_neighbors, outputRejectLevels=True)
        if len(rects) == 0:
            return Detections()
        r = np.asarray(rects, dtype=np.float64).reshape(-1, 4) / scale
        boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], 1)
        scores = np.array([1 / (1 + math.exp(-float(w))) for w in np.asarray(weights).ravel()])
        return Detections(boxes, scores, np.full(len(boxes), self.category_id, np.int64))


class YoloDetector:
    """An ultralytics YOLO weights file (``yolo:PATH.pt``); category ids are its class ids."""

    def __init__(self, weights: str, device: str | None = None) -> None:
        if not weights or not Path(weights).is_file():
            raise InputError(f"YOLO weights not found: {weights!r}; give the path of an ultralytics .pt file "
                             f"(--detector yolo:PATH.pt). swiftsam downloads no detector weights.")
        ultralytics = require("ultralytics", "the yolo detector adapter")
        self.model, self.device, self.name = ultralytics.YOLO(weights), device, f"yolo:{Path(weights).name}"

    def detect(self, image: np.ndarray) -> Detections:
        result = self.model.predict(np.ascontiguousarray(image[..., ::-1]), verbose=False, device=self.device)[0]
        b = result.boxes
        return Detections(b.xyxy.cpu().numpy().astype(np.float64), b.conf.cpu().numpy().astype(np.float64),
                          b.cls.cpu().numpy().astype(np.int64))


class TextDetector:
    """A transformers zero-shot detector from text prompts: OWL-ViT / OWLv2 (``owlvit:MODEL_ID``) or Grounding
    DINO (``grounding-dino:MODEL_ID``); a local folder or a model id already in the Hugging Face cache. The
    category id of a box is the index of its text (``texts``) plus ``first_category``."""

    def __init__(self, kind: str, model_id: str, texts: list[str], threshold: float = 0.1,
                 first_category: int = 1) -> None:
        if not model_id:
            raise InputError(f"--detector {kind}: needs a model id or folder ({kind}:MODEL_ID).")
        if not texts:
            raise InputError(f"--detector {kind} finds what --text names: give --text 'a person' (repeatable).")
        transformers = require("transformers", f"the {kind} detector adapter")
        require("torch", f"the {kind} detector adapter")
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model_id)
            self.model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(model_id).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load {kind} model {model_id!r} ({type(e).__name__}: {e}); give a local folder "
                             f"or a model id already downloaded.") from None
        self.kind, self.texts, self.threshold, self.first = kind, list(texts), threshold, first_category
        self.name = f"{kind}:{model_id}"

    def detect(self, image: np.ndarray) -> Detections:
        import torch

        h, w = image.shape[:2]
        text = [self.texts] if self.kind == "owlvit" else ". ".join(self.texts) + "."
        inputs = self.processor(text=text, images=image, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**inputs)
        if self.kind == "owlvit":
            res = self.processor.post_process_object_detection(outputs, threshold=self.threshold,
                                                               target_sizes=[(h, w)])[0]
            labels = res["labels"].cpu().numpy().astype(np.int64)
        else:
            res = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.threshold, target_sizes=[(h, w)])[0]
            names = res.get("text_labels", res.get("labels"))
            labels = np.array([next((i for i, t in enumerate(self.texts) if t.lower() in str(n).lower()), 0)
                               for n in names], dtype=np.int64)
        return Detections(res["boxes"].cpu().numpy().astype(np.float64), res["scores"].cpu().numpy().astype(np.float64),
                          labels + self.first)


def get_detector(spec: str, texts: list[str] | None = None, category_id: int = 1):
    """A detector from its ``--detector`` spelling (``DETECTOR_HELP``)."""
    if spec in HAAR_CASCADES:
        return HaarDetector(spec, category_id=category_id)
    kind, _, arg = spec.partition(":")
    if kind == "yolo":
        return YoloDetector(arg)
    if kind in ("owlvit", "grounding-dino"):
        return TextDetector(kind, arg, texts or [], first_category=category_id)
    raise InputError(f"unknown detector {spec!r}: {DETECTOR_HELP}.")
