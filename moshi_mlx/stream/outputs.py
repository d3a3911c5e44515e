"""Where a processed frame goes: the recording, the transcript and the event callback (file mode, echo, live)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..codec import FRAME_SIZE
from .pipeline import FrameEvent
from .recording import TranscriptWriter, WavRecorder


def whole_frames(audio: np.ndarray, frame_size: int = FRAME_SIZE) -> np.ndarray:
    """Mono float32 audio zero-padded to whole frames (one frame at least), as `[frames, frame_size]`."""
    count = max(1, -(-len(audio) // frame_size))
    padded = np.zeros(count * frame_size, np.float32)
    padded[: len(audio)] = audio
    return padded.reshape(count, frame_size)


class FrameOutputs:
    """One processed frame's fan-out, in this order: the recorder, the transcript, what is kept, `on_event`.

    Called as the frame loop's sink, `(event, user frame, Moshi's samples or None)`. `keep_frames` > 0 also keeps
    Moshi's voice (that many frames, silent where Moshi did not speak), the events and the text, for a
    `FileResult`; 0 keeps nothing, so that a long run's memory stays flat.
    """

    def __init__(
        self,
        recorder: WavRecorder | None = None,
        transcript: TranscriptWriter | None = None,
        on_event: Callable[[FrameEvent], None] | None = None,
        keep_frames: int = 0,
        frame_size: int = FRAME_SIZE,
    ):
        self.recorder, self.transcript, self.on_event = recorder, transcript, on_event
        self.keep = keep_frames > 0
        self.frame_size = frame_size
        self.frames = 0  # frames written
        self.moshi = np.zeros(keep_frames * frame_size, np.float32) if self.keep else None
        self.events: list[FrameEvent] = []
        self.text_tokens: list[int] = []
        self._pieces: list[str] = []

    def __call__(self, event: FrameEvent, user: np.ndarray, moshi: np.ndarray | None) -> None:
        self.frames += 1
        if self.recorder is not None:
            self.recorder.write(user, moshi)
        if self.transcript is not None:
            self.transcript.write(event.text)
        if self.keep:
            if moshi is not None:
                self.moshi[event.index * self.frame_size : (event.index + 1) * self.frame_size] = moshi
            self.events.append(event)
            self.text_tokens.append(event.text_token)
            self._pieces.append(event.text or "")
        if self.on_event is not None:
            self.on_event(event)

    def kept(self) -> dict[str, Any]:
        """What a `FileResult` takes from the run besides the user's audio."""
        return dict(text="".join(self._pieces).strip(), text_tokens=self.text_tokens, frames=self.frames,
                    moshi=self.moshi, events=self.events)

    def close(self) -> None:
        """Close the recorder, then the transcript (each that was given)."""
        for sink in (self.recorder, self.transcript):
            if sink is not None:
                sink.close()
