"""What the engine needs from an audio codec: one 80 ms frame in, 8 codes out, and back."""

from __future__ import annotations

from typing import Protocol

import numpy as np

SAMPLE_RATE = 24000
FRAME_SIZE = 1920  # 80 ms at 24 kHz: one Mimi frame, one model step
FRAME_S = FRAME_SIZE / SAMPLE_RATE  # 0.08
FRAME_MS = 1000 * FRAME_S  # 80.0
NUM_CODEBOOKS = 8  # Moshi uses the first 8 of Mimi's 32 codebooks
CARDINALITY = 2048


class Codec(Protocol):
    """A streaming audio codec: the encoder and the decoder each keep their own state across frames."""

    sample_rate: int
    frame_size: int
    num_codebooks: int
    cardinality: int  # codes lie in [0, cardinality)
    # True when encode and decode may each run on a worker thread of their own, at the same time as each other
    # and as MLX work on the inference thread (a CPU codec that releases the GIL, e.g. rustymimi). False for a
    # codec that runs MLX: MLX's GPU streams belong to the inference thread, so such a codec is called there.
    runs_off_thread: bool

    def encode(self, frame: np.ndarray) -> np.ndarray:
        """One frame of float32 samples `[frame_size]` -> int64 codes `[num_codebooks]`."""
        ...

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes `[num_codebooks]` -> one frame of float32 samples `[frame_size]`."""
        ...

    def reset(self) -> None:
        """Forget the stream: the next frame starts a new conversation."""
        ...

    def notices(self) -> list[str]:
        """One-line messages for the user since the last call (e.g. a stream that failed and was renewed)."""
        ...

    def close(self) -> None:
        """Release worker threads and memory; the codec is not used afterwards."""
        ...


def check_frame(frame: np.ndarray, frame_size: int = FRAME_SIZE) -> np.ndarray:
    """`frame` as contiguous float32 `[frame_size]` (no copy when it already is), or ValueError."""
    pcm = np.ascontiguousarray(frame, dtype=np.float32).reshape(-1)
    if pcm.shape[0] != frame_size:
        raise ValueError(f"expected a frame of {frame_size} samples, got shape {np.shape(frame)}")
    return pcm


def check_codes(codes: np.ndarray, num_codebooks: int = NUM_CODEBOOKS, card: int = CARDINALITY) -> np.ndarray:
    """Codes as contiguous uint32 `[num_codebooks]`, or ValueError (out of range or wrong count)."""
    values = np.asarray(codes).reshape(-1)
    if values.shape[0] != num_codebooks:
        raise ValueError(f"expected {num_codebooks} codes, got shape {np.shape(codes)}")
    if values.size and (values.min() < 0 or values.max() >= card):
        raise ValueError(f"codes must lie in [0, {card}), got {values.min()}..{values.max()}")
    return np.ascontiguousarray(values, dtype=np.uint32)
