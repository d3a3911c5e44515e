"""Audio codecs: Mimi turns 80 ms of 24 kHz audio into 8 codes and back."""

from __future__ import annotations

from pathlib import Path

from .base import CARDINALITY, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE, Codec

BACKENDS = ("rustymimi",)


def load_codec(path: str | Path, backend: str = "rustymimi", num_codebooks: int = NUM_CODEBOOKS) -> Codec:
    """Kyutai's Mimi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`) behind the `Codec` interface."""
    if backend == "rustymimi":
        from .rustymimi_backend import RustyMimi

        return RustyMimi(path, num_codebooks=num_codebooks)
    raise ValueError(f"unknown codec backend {backend!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["CARDINALITY", "Codec", "FRAME_SIZE", "NUM_CODEBOOKS", "SAMPLE_RATE", "load_codec"]
