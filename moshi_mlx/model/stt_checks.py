"""Checks of what Kyutai's speech-to-text configs add: `model_type`, `stt_config`, and `dep_q` 0 (no depth model)."""

from __future__ import annotations

from typing import Any

# Kyutai's loader defaults `model_type` to "moshi"; "stt" is Kyutai's STT, "tts" its TTS. Kyutai's "hibiki" (speech
# translation: an end-of-stream input and early-EOS handling) is not run by this port.
MODEL_TYPES = ("moshi", "stt", "tts")
STT_KEYS = ("audio_delay_seconds", "audio_silence_prefix_seconds")  # what Kyutai's `run_inference` reads
MAX_SECONDS = 60.0


def stt_problems(model_type: str, dep_q: int, stt_config: Any) -> list[str]:
    """What is wrong with a config's STT settings (empty when they fit)."""
    problems = []
    if stt_config is not None:
        for key in STT_KEYS:
            value = stt_config.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SECONDS:
                problems.append(f"stt_config {key} {value!r}: expected a number of seconds from 0 to {MAX_SECONDS:g}")
    if model_type == "stt" and dep_q != 0:
        problems.append(f"model_type stt with dep_q {dep_q}: a speech-to-text model generates no audio (dep_q 0)")
    return problems


def stt_seconds(stt_config: dict[str, Any] | None) -> tuple[float, float]:
    """`(audio_delay_seconds, audio_silence_prefix_seconds)`, 0 when left out, as Kyutai's `run_inference` reads
    them."""
    values = stt_config or {}
    return float(values.get("audio_delay_seconds", 0.0)), float(values.get("audio_silence_prefix_seconds", 0.0))
