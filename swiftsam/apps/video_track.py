"""``swiftsam track`` for video models (SAM 2.1): the first frame's prompt, then the model's own memory.

Image-only models go through ``apps.tracker.Tracker`` (each frame prompted from the previous result); a model with
SAM 2's memory (``contract.object_score``) tracks with ``video.VideoPredictor``, frames read as they are needed.
Both give ``apps.tracker.Frame`` records, written by ``apps.tracker.write_track``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..video import VideoPredictor
from .tracker import Frame, mask_box


def is_video_model(model) -> bool:
    """Whether ``model`` tracks with a memory of its own (SAM 2.1), rather than frame by frame."""
    return bool(getattr(model, "contract", None) is not None and model.contract.object_score
                and hasattr(model, "memory_attention"))


def track_with_memory(model, frames: Iterable[np.ndarray], box=None, mask: np.ndarray | None = None,
                      point=None) -> Iterator[Frame]:
    """One object through ``frames`` with a SAM 2 model: ``box`` (x0, y0, x1, y1), ``point`` (x, y, a positive
    click) or ``mask`` (H x W) on the first frame. A frame's score is the mean foreground probability (sigmoid of
    the logits) inside its mask; a frame whose mask is empty is lost ("object absent")."""
    if sum(x is not None for x in (box, mask, point)) != 1:
        raise InputError("give exactly one of box, point or mask for the first frame.")
    predictor = VideoPredictor(model)
    state = predictor.init_state(frames)  # read as needed
    if mask is not None:
        predictor.add_new_mask(state, 0, 1, mask)
    elif box is not None:
        predictor.add_new_points_or_box(state, 0, 1, box=np.asarray(box, np.float32))
    else:
        predictor.add_new_points_or_box(state, 0, 1, points=np.asarray([point], np.float32),
                                        labels=np.array([1], np.int32))
    results: dict[int, Frame] = {}
    for frame_idx, _, logits in predictor.propagate_in_video(state):
        lg = logits[0, 0].float()
        m = (lg > 0).cpu().numpy()
        prob = torch.sigmoid(lg)
        score = float(prob[lg > 0].mean()) if m.any() else 0.0
        b = mask_box(m)
        results[frame_idx] = Frame(m, score, None if b is None else [float(v) for v in b], not m.any(),
                                   None if m.any() else "object absent")
    for k in sorted(results):
        yield results[k]
