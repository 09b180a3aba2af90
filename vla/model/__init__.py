"""The VLA network: observation encoders (vision, language, state) and the action expert."""

from vla.model.config import ModelConfig, TextConfig, VisionConfig
from vla.model.expert import ActionExpert, time_embedding
from vla.model.observation import ObservationEncoder, Prefix, canonical_features

__all__ = [
    "ActionExpert",
    "ModelConfig",
    "ObservationEncoder",
    "Prefix",
    "TextConfig",
    "VisionConfig",
    "canonical_features",
    "time_embedding",
]
