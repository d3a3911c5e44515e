"""The sound devices of a live conversation: PortAudio's callbacks, the queues between them and the engine, stats.

The input callback queues each block the microphone captured (`AudioDevices.mic`); the output callback plays the
blocks queued for the speaker (`AudioDevices.play`), silence when there are none, and hands what it played to the
echo canceller as its reference. The callbacks run on PortAudio's threads: they only move numpy blocks (no
waiting, no MLX, one small copy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codec import FRAME_MS, SAMPLE_RATE
from ..errors import MoshiError
from .audio_io import Chunker, StreamResampler, StreamSettings, find_device, sounddevice, stream_settings
from .echo.canceller import EchoCanceller

TIMES_KEPT = 4096  # callback timestamps kept for the stats (about 5 minutes)
MIC_BLOCKS_KEPT = 64  # input blocks held while the loop is stalled (about 5 s); older ones are dropped
PLAYOUT_S = 0.5  # on stop, Moshi's queued audio is played for up to this long

MicBlock = tuple[np.ndarray, float, float]  # the device's samples, time.monotonic() at arrival, its ADC time


@dataclass
class EngineStats:
    """Counters and timings of a live run (a snapshot; `Engine.stats()`)."""

    input: StreamSettings | None = None
    output: StreamSettings | None = None
    received: int = 0  # input blocks delivered by the input callback
    processed: int = 0  # frames run through the model
    dropped: int = 0  # input frames dropped by the lag policy (and those left unprocessed at stop)
    stalled_dropped: int = 0  # of those, dropped by the input callback while the loop was stalled
    underruns: int = 0  # output blocks played as silence after Moshi started speaking
    output_dropped: int = 0  # Moshi blocks discarded because the speaker queue was over its bound
    played: int = 0  # Moshi blocks handed to the speaker
    unplayed: int = 0  # Moshi blocks still queued for the speaker when it closed
    input_overflows: int = 0  # PortAudio status flags reported to the callbacks
    output_underflows: int = 0
    callback_max_ms: float = 0.0  # longest time spent inside one of our callbacks
    first_output_frames: float | None = None  # first input callback -> first Moshi block played, in frames
    input_times: list[float] = field(default_factory=list)  # monotonic times of the last input callbacks
    output_times: list[float] = field(default_factory=list)

    @staticmethod
    def intervals_ms(times: list[float]) -> np.ndarray:
        return np.diff(np.asarray(times)) * 1000.0


class AudioDevices:
    """A microphone and a speaker opened as 80 ms blocks, with the queues and counters the engine reads.

    `choose()` finds the devices and how to open them (nothing opens); `open()` starts both streams;
    `close_input()` then `play_out_and_close()` stop them. `echo`, when set, gets every block the speaker plays.
    """

    def __init__(self, input_device: str | int | None = None, output_device: str | int | None = None,
                 samplerate: int | None = None):
        self.input_device, self.output_device, self.samplerate = input_device, output_device, samplerate
        self.stats = EngineStats()
        self.echo: EchoCanceller | None = None
        self.mic: queue.Queue[MicBlock] = queue.Queue(maxsize=MIC_BLOCKS_KEPT)
        self.speaker: deque[np.ndarray] = deque()  # device blocks waiting for the output callback
        self.input_stream: Any = None
        self.output_stream: Any = None
        self._in_times: deque[float] = deque(maxlen=TIMES_KEPT)
        self._out_times: deque[float] = deque(maxlen=TIMES_KEPT)
        self._first_input: float | None = None
        self._speaking = False  # Moshi's first block has been queued
        self._to_speaker_rate: StreamResampler | None = None
        self._speaker_blocks: Chunker | None = None

    def choose(self) -> None:
        """Find both devices and the settings they take (`stats.input`, `stats.output`); opens nothing."""
        sounddevice()
        self.stats.input = stream_settings(find_device(self.input_device, "input"), "input", self.samplerate)
        self.stats.output = stream_settings(find_device(self.output_device, "output"), "output", self.samplerate)
        self._to_speaker_rate = StreamResampler(SAMPLE_RATE, self.stats.output.samplerate)
        self._speaker_blocks = Chunker(self.stats.output.blocksize)

    def open(self) -> None:
        """Open and start the speaker, then the microphone; MoshiError when a device refuses."""
        sd = sounddevice()
        in_settings, out_settings = self.stats.input, self.stats.output
        assert in_settings is not None and out_settings is not None, "choose() the devices first"
        try:
            self.output_stream = sd.OutputStream(
                device=out_settings.device, samplerate=out_settings.samplerate, channels=out_settings.channels,
                blocksize=out_settings.blocksize, dtype="float32", callback=self._on_output,
            )
            self.input_stream = sd.InputStream(
                device=in_settings.device, samplerate=in_settings.samplerate, channels=in_settings.channels,
                blocksize=in_settings.blocksize, dtype="float32", callback=self._on_input,
            )
            self.output_stream.start()
            self.input_stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise MoshiError(f"cannot open the audio devices: {e}") from None

    # --- the callbacks: PortAudio's threads, no waiting, no MLX ---

    def _on_input(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        start = time.monotonic()
        if self._first_input is None:
            self._first_input = start
        self._in_times.append(start)
        if status.input_overflow:
            self.stats.input_overflows += 1
        block = (indata.copy(), start, time_info.inputBufferAdcTime)
        try:
            self.mic.put_nowait(block)
        except queue.Full:  # the loop is stalled: keep the newest audio
            with contextlib.suppress(queue.Empty):
                self.mic.get_nowait()
                self.stats.stalled_dropped += 1
            self.mic.put_nowait(block)
        self.stats.received += 1
        self.stats.callback_max_ms = max(self.stats.callback_max_ms, (time.monotonic() - start) * 1000)

    def _on_output(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        start = time.monotonic()
        self._out_times.append(start)
        if status.output_underflow:
            self.stats.output_underflows += 1
        try:
            block = self.speaker.popleft()
        except IndexError:
            outdata.fill(0)
            if self._speaking:
                self.stats.underruns += 1
        else:
            self.stats.played += 1
            if self.stats.first_output_frames is None and self._first_input is not None:
                self.stats.first_output_frames = (start - self._first_input) * 1000 / FRAME_MS
            n = min(frames, len(block))
            outdata[:n] = block[:n, None]
            outdata[n:] = 0
        if self.echo is not None:  # the reference is exactly what the speaker gets, silence included
            self.echo.add_reference(outdata[:, 0], time_info.outputBufferDacTime)
        self.stats.callback_max_ms = max(self.stats.callback_max_ms, (time.monotonic() - start) * 1000)

    # --- the engine's side ---

    def play(self, moshi: np.ndarray) -> None:
        """Moshi's 24 kHz samples, resampled to the speaker's rate and queued as its blocks."""
        assert self._to_speaker_rate is not None and self._speaker_blocks is not None, "choose() the devices first"
        for block in self._speaker_blocks(self._to_speaker_rate(moshi)):
            self.speaker.append(block)
            self._speaking = True

    def close_input(self) -> None:
        if self.input_stream is not None:
            self.input_stream.close()

    def play_out_and_close(self, seconds: float = PLAYOUT_S) -> None:
        """Let the speaker play what is queued (up to `seconds`), then close it; both streams are then gone."""
        if self.output_stream is not None:
            deadline = time.monotonic() + seconds
            while self.speaker and self.output_stream.active and time.monotonic() < deadline:
                time.sleep(0.01)
            self.output_stream.stop()  # plays what PortAudio already holds (two blocks at most)
            self.output_stream.close()
        self.input_stream = self.output_stream = None

    def count_leftovers(self) -> None:
        """Once closed: Moshi's blocks never played, and the microphone's blocks never processed (as dropped)."""
        self.stats.unplayed = len(self.speaker)
        while not self.mic.empty():
            self.mic.get_nowait()
            self.stats.dropped += 1

    def snapshot(self) -> EngineStats:
        """A copy of the stats, with the callbacks' times and all the dropped frames counted in `dropped`."""
        return dataclasses.replace(
            self.stats, dropped=self.stats.dropped + self.stats.stalled_dropped,
            input_times=list(self._in_times), output_times=list(self._out_times),
        )
