"""Which command a model is for: a conversation (Moshi, PersonaPlex), speech to text, or text to speech."""

from __future__ import annotations

from ..errors import MoshiError
from .config import LmConfig

KINDS = {
    "conversation": ("chat", "a conversation model"),
    "stt": ("transcribe", "a speech-to-text model"),
    "tts": ("say", "a text-to-speech model"),
}
COMMAND_KIND = {"chat": "conversation", "run": "conversation", "serve": "conversation", "transcribe": "stt",
                "say": "tts"}


def model_kind(config: LmConfig) -> str:
    """`conversation`, `stt` or `tts`, from the config (Kyutai's `model_type` where it says, else the structure)."""
    if config.model_type == "tts" or config.tts_config or config.conditioners or config.cross_attention:
        return "tts"
    if config.model_type == "stt" or config.dep_q == 0:
        return "stt"
    return "conversation"


def check_model_for(command: str, config: LmConfig, source: str = "the model") -> None:
    """One-line `MoshiError` when `config`'s model cannot serve `moshi-mlx command`, naming the command that can."""
    kind = model_kind(config)
    if kind != COMMAND_KIND[command]:
        right, what = KINDS[kind]
        raise MoshiError(f"{source} is {what}, not for `moshi-mlx {command}`: use `moshi-mlx {right}` with it, "
                         f"or give {KINDS[COMMAND_KIND[command]][1]}")
