"""Moshi over a recording instead of a microphone: every frame in order, as fast as the machine goes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..codec import SAMPLE_RATE
from .audio_io import read_mono_24k
from .frame_loop import run_frame_loop
from .outputs import FrameOutputs, whole_frames
from .pipeline import FrameEvent, Pipeline
from .recording import TranscriptWriter, WavRecorder


@dataclass
class FileResult:
    """Moshi's voice (24 kHz, one frame per input frame, silent at step 0), its text and the per-frame events.

    `moshi` and `events` are kept only when asked (`run_frames(..., keep=True)`); a long file run writes them out
    as it goes instead, so its memory does not grow with the file.
    """

    user: np.ndarray  # the input as Moshi heard it: mono, 24 kHz, padded to whole frames
    text: str
    text_tokens: list[int]
    frames: int
    moshi: np.ndarray | None = None
    events: list[FrameEvent] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.user) / SAMPLE_RATE


def run_frames(
    pipeline: Pipeline,
    audio: np.ndarray,
    on_event: Callable[[FrameEvent], None] | None = None,
    recorder: WavRecorder | None = None,
    transcript: TranscriptWriter | None = None,
    keep: bool = True,
    overlap: bool | None = None,
) -> FileResult:
    """Run mono 24 kHz float32 audio through a fresh pipeline, zero-padded to whole 80 ms frames.

    The stages overlap (`frame_loop.run_frame_loop`) when the codec allows, unless `overlap` is False; the output is the
    same either way: Moshi's frame produced at step t is placed at frame t.
    """
    if not pipeline.ready:  # used, or its persona not fed yet
        pipeline.new_conversation()
    frames = whole_frames(audio, pipeline.frame_size)
    outputs = FrameOutputs(recorder, transcript, on_event, len(frames) if keep else 0, pipeline.frame_size)
    run_frame_loop(pipeline, frames, outputs, overlap=overlap)
    return FileResult(user=frames.reshape(-1), **outputs.kept())


def run_file(
    pipeline: Pipeline,
    source: str | Path | np.ndarray,
    out_path: str | Path,
    transcript_path: str | Path | None = None,
    stereo: bool = False,
    on_event: Callable[[FrameEvent], None] | None = None,
    keep: bool = False,
) -> FileResult:
    """Any audio file (any rate, any channels; or mono 24 kHz float32 samples) in; Moshi's voice out as a 24 kHz
    WAV (stereo: user left, Moshi right) and its transcript as text, written as frames go and closed even on error.
    `keep` also keeps them in the result (see `run_frames`).
    """
    audio = source if isinstance(source, np.ndarray) else read_mono_24k(source)
    with open_outputs(out_path, transcript_path, stereo) as (recorder, transcript):
        return run_frames(pipeline, audio, on_event, recorder, transcript, keep=keep)


@contextmanager
def open_outputs(
    out_path: str | Path, transcript_path: str | Path | None, stereo: bool
) -> Iterator[tuple[WavRecorder, TranscriptWriter | None]]:
    """The WAV recorder and the transcript writer (if asked for) of a file run, both closed on the way out."""
    with ExitStack() as files:
        recorder = WavRecorder(out_path, stereo=stereo)
        files.callback(recorder.close)
        transcript = None
        if transcript_path is not None:
            transcript = TranscriptWriter(transcript_path)
            files.callback(transcript.close)
        yield recorder, transcript
