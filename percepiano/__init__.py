"""percepiano: the PercePiano HAN and Bi-LSTM models, compact and proven equal to the original code."""
from __future__ import annotations

__version__ = "0.1.0"

from .config import PRESETS, ModelConfig, get_preset  # noqa: E402
from .model import ModelOutput, PercePianoModel  # noqa: E402

__all__ = ["ModelConfig", "PercePianoModel", "ModelOutput", "PRESETS", "get_preset", "__version__"]
