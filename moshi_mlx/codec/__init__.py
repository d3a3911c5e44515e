"""Audio codecs: Mimi turns 80 ms of 24 kHz audio into 8 codes and back."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..errors import MoshiError
from .base import CARDINALITY, FRAME_MS, FRAME_S, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE, Codec

BACKENDS = ("auto", "mlx", "rust")


def rustymimi_installed() -> bool:
    return importlib.util.find_spec("rustymimi") is not None


def choose_backend(backend: str = "auto") -> tuple[str, str]:
    """`(backend, why)`: "mlx" or "rust" as asked, or for "auto" MLX on a GPU, else rustymimi when installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown codec backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "rust":
        if not rustymimi_installed():
            raise MoshiError("--mimi rust needs rustymimi: pip install rustymimi (or use --mimi mlx)")
        return "rust", "asked for"
    if backend == "mlx":
        return "mlx", "asked for"
    if mx.default_device() == mx.gpu:
        return "mlx", "MLX runs on the GPU"
    if rustymimi_installed():
        return "rust", "MLX runs on the CPU, where rustymimi is faster"
    return "mlx", "MLX runs on the CPU and rustymimi is not installed"


def load_codec(
    path: str | Path,
    backend: str = "auto",
    num_codebooks: int = NUM_CODEBOOKS,
    dtype: mx.Dtype = mx.float32,
    **options: Any,
) -> Codec:
    """Kyutai's Mimi checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`) behind the `Codec` interface.

    `backend`: "mlx" (our MLX Mimi, `dtype` float32 by default), "rust" (rustymimi, float32 on the CPU) or
    "auto" (see `choose_backend`). "rustymimi" is accepted for "rust". `options` go to rustymimi (`max_seq_len`,
    `renew_every`, `prime_frames`: see `rustymimi_backend`); MLX Mimi needs none (its state is bounded).
    """
    chosen, _ = choose_backend("rust" if backend == "rustymimi" else backend)
    if chosen == "rust":
        from .rustymimi_backend import RustyMimi

        return RustyMimi(path, num_codebooks=num_codebooks, **options)
    from .mlx_backend import MlxMimi

    return MlxMimi(path, num_codebooks=num_codebooks, dtype=dtype)


__all__ = [
    "BACKENDS", "CARDINALITY", "Codec", "FRAME_MS", "FRAME_S", "FRAME_SIZE", "NUM_CODEBOOKS", "SAMPLE_RATE",
    "choose_backend", "load_codec",
]
