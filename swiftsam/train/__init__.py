"""Training: distil a student from a teacher (NanoSAM, TinySAM) or train on masks (EfficientViT-SAM
stage 2, custom data). ``swiftsam train CONFIG.yaml`` is the command line; ``torchrun`` runs it on
several processes."""

from .config import ModelSpec, TrainConfig, load_config
from .trainer import Interrupted, train

__all__ = ["Interrupted", "ModelSpec", "TrainConfig", "load_config", "train"]
