"""A recording through a speech-to-text model as Kyutai's `run_inference` does it (model_type "stt"): silence before
the audio (`audio_silence_prefix_seconds`), silence after it (`audio_delay_seconds` + 1 s, so that the delayed text of
the last words comes out), whole 80 ms frames only. Streams: an hour of audio goes through in bounded memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain

import numpy as np

from ..codec import FRAME_S, FRAME_SIZE, SAMPLE_RATE
from ..model.config import LmConfig
from ..model.stt import stt_delays
from .pipeline import FrameEvent, Pipeline

FLUSH_S = 1.0  # Kyutai's run_inference pads the end by the delay plus this


def stt_padding(config: LmConfig) -> tuple[int, int]:
    """Samples of silence (24 kHz) before and after the audio: `int(prefix * 24000)`, `int((delay + 1) * 24000)`.

    Of the padded stream only whole frames are used: a last partial frame is dropped, not padded.
    """
    delay, prefix = stt_delays(config)
    return int(prefix * SAMPLE_RATE), int((delay + FLUSH_S) * SAMPLE_RATE)


def input_time(frame_index: int, config: LmConfig) -> float:
    """Seconds into the input (before padding) of the audio the text of a frame is about: its start in the padded
    stream less the silence prefix and the model's delay (negative for the text of the prefix)."""
    delay, prefix = stt_delays(config)
    return frame_index * FRAME_S - prefix - delay


def padded_frames(blocks: Iterable[np.ndarray], config: LmConfig) -> Iterator[np.ndarray]:
    """Whole frames (float32 `[1920]`) of the silence prefix, the audio blocks (mono float32 at 24 kHz, any sizes)
    and the closing silence, as `run_inference` pads and splits them; a last partial frame is dropped."""
    before, after = stt_padding(config)
    pending = np.zeros(before, np.float32)
    for block in chain(blocks, [np.zeros(after, np.float32)]):
        pending = np.concatenate([pending, np.asarray(block, np.float32).reshape(-1)])
        whole = len(pending) // FRAME_SIZE * FRAME_SIZE
        for start in range(0, whole, FRAME_SIZE):
            yield pending[start : start + FRAME_SIZE]
        pending = pending[whole:]


def transcribe_blocks(pipeline: Pipeline, blocks: Iterable[np.ndarray]) -> Iterator[FrameEvent]:
    """Each padded frame through the pipeline (Mimi, then the STT step): one event per frame, in order, from a fresh
    start. With `SttGen`'s `repeat_first_frame` (the default) the tokens are `run_inference`'s printed ones."""
    pipeline.reset()
    for frame in padded_frames(blocks, pipeline.gen.cfg):
        event, _ = pipeline.step(frame)
        yield event
