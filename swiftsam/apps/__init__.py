"""Applications over the Predictor: detections, a detector or person keypoints -> COCO instance masks
(``label``), and tracking with any image model (``tracker``)."""

from .detections import Detections, load_detections
from .detectors import get_detector
from .keypoints import DEFAULT_PERSON_PROMPT, PARTS, Person, PersonPrompt, load_keypoints, person_prompts
from .label import Prompts, box_prompts, keypoint_prompts, label_images

__all__ = [
    "DEFAULT_PERSON_PROMPT", "PARTS", "Detections", "Person", "PersonPrompt", "Prompts", "box_prompts", "get_detector",
    "keypoint_prompts", "label_images", "load_detections", "load_keypoints", "person_prompts",
]
