"""moshi-mlx: Kyutai's Moshi speech-text model on MLX."""

from .errors import MoshiError
from .model.config import LmConfig
from .model.generate import LmGen, PendingStep, StepOutput
from .model.lm import Lm
from .model.text import text_piece
from .model.weights import load_lm, save_lm

__version__ = "0.1.0"
__all__ = ["Lm", "LmConfig", "LmGen", "MoshiError", "PendingStep", "StepOutput", "load_lm", "save_lm", "text_piece"]
