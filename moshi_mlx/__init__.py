"""moshi-mlx: Kyutai's Moshi speech-text model on MLX.

The public API: load a model (`load_lm`, `load_codec`, or both with a text tokenizer as `Pipeline.load`), step it
(`LmGen`, `Pipeline.step`), run it over a file (`run_file`) or live on sound devices (`Engine`).
"""

from .codec import FRAME_SIZE, SAMPLE_RATE, Codec, load_codec
from .errors import MoshiError
from .model.config import LmConfig
from .model.generate import LmGen, PendingStep, StepOutput
from .model.lm import Lm
from .model.stt import SttGen, end_of_turn, make_generator
from .model.text import text_piece
from .model.weights import load_lm, save_lm
from .stream.audio_io import read_mono_24k
from .stream.engine import Engine
from .stream.filemode import FileResult, run_file, run_frames
from .stream.pipeline import FrameEvent, Pipeline
from .stream.stt_file import padded_frames, stt_padding, transcribe_blocks

__version__ = "0.1.0"
__all__ = [
    "FRAME_SIZE", "SAMPLE_RATE", "Codec", "Engine", "FileResult", "FrameEvent", "Lm", "LmConfig", "LmGen",
    "MoshiError", "PendingStep", "Pipeline", "StepOutput", "load_codec", "load_lm", "read_mono_24k", "run_file",
    "run_frames", "save_lm", "text_piece",
    "SttGen", "end_of_turn", "make_generator", "padded_frames", "stt_padding", "transcribe_blocks",
]
