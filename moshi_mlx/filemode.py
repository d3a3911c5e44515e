"""Moshi over a recording instead of a microphone: every frame in order, as fast as the machine goes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio_io import read_mono_24k
from .codec import SAMPLE_RATE
from .pipeline import FrameEvent, Pipeline
from .recording import TranscriptWriter, WavRecorder


@dataclass
class FileResult:
    """Moshi's voice (24 kHz, one frame per input frame, silent at step 0), its text and the per-frame events."""

    moshi: np.ndarray
    user: np.ndarray  # the input as Moshi heard it: mono, 24 kHz, padded to whole frames
    text: str
    text_tokens: list[int]
    events: list[FrameEvent]

    @property
    def seconds(self) -> float:
        return len(self.user) / SAMPLE_RATE


def run_frames(
    pipeline: Pipeline,
    audio: np.ndarray,
    on_event: Callable[[FrameEvent], None] | None = None,
    recorder: WavRecorder | None = None,
    transcript: TranscriptWriter | None = None,
) -> FileResult:
    """Run mono 24 kHz float32 audio through a fresh pipeline, zero-padded to whole 80 ms frames."""
    if pipeline.gen.step_index > 0:
        pipeline.reset()
    size = pipeline.frame_size
    count = max(1, -(-len(audio) // size))
    user = np.zeros(count * size, np.float32)
    user[: len(audio)] = audio
    moshi = np.zeros_like(user)
    events, tokens, text = [], [], ""
    for t in range(count):
        frame = user[t * size : (t + 1) * size]
        event, pcm = pipeline.step(frame)
        if pcm is not None:
            moshi[t * size : (t + 1) * size] = pcm
        if recorder is not None:
            recorder.write(frame, pcm)
        if transcript is not None:
            transcript.write(event.text)
        events.append(event)
        tokens.append(event.text_token)
        text += event.text or ""
        if on_event is not None:
            on_event(event)
    return FileResult(moshi=moshi, user=user, text=text.strip(), text_tokens=tokens, events=events)


def run_file(
    pipeline: Pipeline,
    source: str | Path | np.ndarray,
    out_path: str | Path,
    transcript_path: str | Path | None = None,
    stereo: bool = False,
    on_event: Callable[[FrameEvent], None] | None = None,
) -> FileResult:
    """Any audio file (any rate, any channels; or mono 24 kHz float32 samples) in; Moshi's voice out as a 24 kHz
    WAV (stereo: user left, Moshi right) and its transcript as text, written as frames go and closed even on error.
    """
    audio = source if isinstance(source, np.ndarray) else read_mono_24k(source)
    with ExitStack() as files:
        recorder = WavRecorder(out_path, stereo=stereo)
        files.callback(recorder.close)
        transcript = None
        if transcript_path is not None:
            transcript = TranscriptWriter(transcript_path)
            files.callback(transcript.close)
        return run_frames(pipeline, audio, on_event, recorder, transcript)
