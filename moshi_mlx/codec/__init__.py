"""Audio codecs: Mimi turns 80 ms of 24 kHz audio into 8 codes and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import CARDINALITY, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE, Codec

BACKENDS = ("rustymimi",)


def load_codec(
    path: str | Path, backend: str = "rustymimi", num_codebooks: int = NUM_CODEBOOKS, **options: Any
) -> Codec:
    """Kyutai's Mimi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`) behind the `Codec` interface.

    `options` go to the backend (rustymimi: `max_seq_len`, `renew_every`, `prime_frames`).
    """
    if backend == "rustymimi":
        from .rustymimi_backend import RustyMimi

        return RustyMimi(path, num_codebooks=num_codebooks, **options)
    raise ValueError(f"unknown codec backend {backend!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["CARDINALITY", "Codec", "FRAME_SIZE", "NUM_CODEBOOKS", "SAMPLE_RATE", "load_codec"]
