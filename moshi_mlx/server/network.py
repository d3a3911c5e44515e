"""A client's connection as the live engine's microphone and speaker.

`NetworkDevices` takes the place of the sound devices (`stream/devices.py`) in an `Engine`: the client's decoded
frames are queued as the microphone's callback queues its frames (`put`, on the event loop's thread: the oldest
dropped when the loop is stalled), so that the lag policy, the pipelined stages, the recording and the transcript
are the ones `chat` uses; Moshi's frames become Ogg Opus pages as they are decoded (`play`, the decoder thread)
and go to the connection's `send`. A frame's "capture" is the moment its last sample reached the server, and its
"playback" the moment its page was written to the socket (`sent`): the engine's latency is the server's share.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ..codec import FRAME_S, FRAME_SIZE, SAMPLE_RATE
from ..stream.audio_io import BLOCKS_PER_FRAME, StreamSettings
from ..stream.devices import MIC_BLOCKS_KEPT, AudioDevices
from ..stream.latency import FrameTimes
from ..stream.speaker_queue import Played
from .protocol import OpusPages

# (page, the engine's tag of the frame, the client's number of the frame it answers)
Send = Callable[[bytes, object, "int | None"], None]


class NetworkDevices(AudioDevices):
    """The engine's devices for one connection: `put` the client's 24 kHz frames, Moshi's pages to `send`."""

    def __init__(self, send: Send):
        super().__init__(samplerate=SAMPLE_RATE)
        self.send = send
        self.pages = OpusPages()
        self._sent: deque[Played] = deque()
        # The client's number of each queued frame, by its arrival time (the key the engine's frames carry).
        self._numbers: deque[tuple[float, int]] = deque(maxlen=4 * MIC_BLOCKS_KEPT)
        self._last_arrival = 0.0
        self._open = False

    def choose(self) -> None:
        settings = StreamSettings(device=None, samplerate=SAMPLE_RATE, channels=1, blocksize=FRAME_SIZE)
        self._use(settings, settings)

    def open(self) -> None:
        self._open = True

    def put(self, frame: np.ndarray, number: int) -> None:
        """The client's frame `number` (from 0), complete now (event loop); ignored once the input is closed."""
        if not self._open:
            return
        # Distinct arrival times: they identify the frames that reach the decoder (`answered`).
        now = max(time.monotonic(), self._last_arrival + 1e-6)
        self._last_arrival = now
        if self._first_input is None:
            self._first_input = now
        self._in_times.append(now)
        self._numbers.append((now, number))
        self._queue_frame((frame, now, now - FRAME_S))

    def answered(self, origin: FrameTimes | None) -> int | None:
        """The client's number of the user frame `origin` (decoder thread; frames are asked for in order)."""
        if origin is None or origin.arrived is None:
            return None
        numbers = self._numbers
        while numbers and numbers[0][0] < origin.arrived:
            numbers.popleft()
        return numbers[0][1] if numbers and numbers[0][0] == origin.arrived else None

    def play(self, moshi: np.ndarray, tag: object = None, max_blocks: int | None = None) -> None:
        """Moshi's frame as an Ogg Opus page to `send` (decoder thread); the connection bounds what waits."""
        origin = tag[0] if isinstance(tag, tuple) else None
        self.send(self.pages(moshi), tag, self.answered(origin))

    def sent(self, tag: object) -> None:
        """A page was written to the socket (event loop): the engine's latency meter takes it from `played`."""
        now = time.monotonic()
        self.stats.played += BLOCKS_PER_FRAME
        self._out_times.append(now)
        if self.stats.first_output_frames is None and self._first_input is not None:
            self.stats.first_output_frames = (now - self._first_input) / FRAME_S
        if tag is not None:
            self._sent.append((tag, now, now, 0.0))

    def close_input(self) -> None:
        self._open = False

    def play_out_and_close(self, seconds: float = 0.0) -> None:
        """Nothing to play out here: the connection sends what is queued."""

    @property
    def played(self) -> deque[Played]:
        return self._sent
