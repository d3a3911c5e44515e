"""A voice given as audio: Kyutai's TTS models without speaker embeddings (`tts-0.75b-en-public`) clone a voice
from a recording whose Mimi codes are forced into the audio streams before the text starts (its `get_prefix` and
the prefix handling of `TTSModel.generate`, moshi 0.2.13).

For the prefix's `P` steps the text fed is the zero token and the state machine waits; codebook `k`'s token at step
`t` is the recording's code `t - delays[k] - delay_steps` where that falls inside it. With CFG as a batch of two,
the unconditioned item is fed zero tokens for the prefix (up to step `P + delay_steps` plus each stream's delay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MoshiError

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus")
# Kyutai drops the recording's last two frames (its encoder's final frames see padding).
DROPPED_FRAMES = 2
UNGENERATED = -2  # Kyutai's "not forced" marker


def encode_prefix(pcm: np.ndarray, codec: Any, n_q: int, frame_size: int = 1920) -> np.ndarray:
    """Mimi codes `[n_q, P]` of mono 24 kHz samples, Kyutai's way (the last two frames dropped)."""
    steps = len(pcm) // frame_size - DROPPED_FRAMES
    if steps < 1:
        raise MoshiError("the voice recording is too short: give at least a quarter of a second of speech")
    frames = [np.asarray(codec.encode(pcm[t * frame_size: (t + 1) * frame_size])).reshape(-1) for t in range(steps)]
    codes = np.stack(frames, axis=1)
    if codes.shape[0] < n_q:
        raise MoshiError(f"the audio codec gives {codes.shape[0]} codebooks, the model needs {n_q}")
    return codes[:n_q].astype(np.int64)


def load_prefix(path: str | Path, codec: Any, n_q: int) -> np.ndarray:
    """A voice recording (any format soundfile reads, any rate: resampled to 24 kHz), as prefix codes."""
    from ..stream.audio_io import read_mono_24k  # its errors are one line already

    codec.reset()
    return encode_prefix(read_mono_24k(path), codec, n_q)


def forced_audio(codes: np.ndarray, step: int, delays: list[int], delay_steps: int) -> np.ndarray:
    """The audio tokens the prefix forces at `step`, one per codebook (`UNGENERATED` where it forces none)."""
    out = np.full(codes.shape[0], UNGENERATED, dtype=np.int64)
    for k in range(codes.shape[0]):
        i = step - delays[k] - delay_steps
        if 0 <= i < codes.shape[1]:
            out[k] = codes[k, i]
    return out
