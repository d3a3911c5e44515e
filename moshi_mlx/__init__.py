"""moshi-mlx: Kyutai's Moshi speech-text model on MLX."""

from .config import LmConfig
from .errors import MoshiError
from .generate import LmGen, PendingStep, StepOutput
from .lm import Lm
from .text import text_piece
from .weights import load_lm, save_lm

__version__ = "0.1.0"
__all__ = ["Lm", "LmConfig", "LmGen", "MoshiError", "PendingStep", "StepOutput", "load_lm", "save_lm", "text_piece"]
