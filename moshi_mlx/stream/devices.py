"""The sound devices of a live conversation: PortAudio's callbacks, the queues between them and the engine, stats.

The devices run in blocks of a quarter frame (20 ms), which keeps their own buffering short. The input callback
gathers them and queues a frame's worth as soon as it is complete (`AudioDevices.mic`; the first one longer by the
most the resampler to 24 kHz keeps back, so that each queued block completes one frame). The output callback plays the
blocks queued for the speaker (`AudioDevices.play`), silence when there are none, and hands what it played to the
echo canceller as its reference. The callbacks run on PortAudio's threads: they only move numpy blocks (no
waiting, no MLX, one small copy). Times are taken to the `time.monotonic()` clock there: each block's ADC or DAC
time, and for each of Moshi's frames the moment its first sample is handed out (`played`, for the latency).

The speaker's queue (`speaker_queue.py`) holds what smooth playback needs and no more.
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

from ..codec import FRAME_MS, FRAME_SIZE, SAMPLE_RATE
from ..errors import MoshiError
from .audio_io import (
    StreamSettings,
    find_device,
    resampler_hold_back,
    sounddevice,
    stream_settings,
)
from .echo.canceller import EchoCanceller
from .latency import LatencySummary, to_monotonic
from .speaker_queue import Played, SpeakerQueue

TIMES_KEPT = 4096  # callback timestamps kept for the stats (about 5 minutes)
MIC_BLOCKS_KEPT = 64  # input frames held while the loop is stalled (about 5 s); older ones are dropped
PLAYOUT_S = 0.5  # on stop, Moshi's queued audio is played for up to this long
LATENCY = "low"  # asked of both devices (PortAudio's low-latency suggestion)

MicBlock = tuple[np.ndarray, float, float]  # a frame's device samples, time.monotonic() at arrival, its ADC time


@dataclass
class EngineStats:
    """Counters and timings of a live run (a snapshot; `Engine.stats()`)."""

    input: StreamSettings | None = None
    output: StreamSettings | None = None
    received: int = 0  # input frames delivered by the input callback
    processed: int = 0  # frames run through the model
    dropped: int = 0  # input frames dropped by the lag policy (and those left unprocessed at stop)
    stalled_dropped: int = 0  # of those, dropped by the input callback while the loop was stalled
    underruns: int = 0  # output blocks (20 ms) played as silence after Moshi started speaking
    output_dropped: int = 0  # Moshi blocks discarded because the speaker queue was over its bound
    output_trimmed: int = 0  # of those, dropped because the queue kept a surplus (a backlog after a hiccup)
    played: int = 0  # Moshi blocks handed to the speaker (a frame is `BLOCKS_PER_FRAME` blocks)
    unplayed: int = 0  # Moshi blocks still queued for the speaker when it closed
    input_overflows: int = 0  # PortAudio status flags reported to the callbacks
    output_underflows: int = 0
    callback_max_ms: float = 0.0  # longest CPU time of one of our callbacks (a preemption of its thread is not ours)
    first_output_frames: float | None = None  # first input callback -> first Moshi block played, in frames
    input_times: list[float] = field(default_factory=list)  # monotonic times of the last input callbacks
    output_times: list[float] = field(default_factory=list)
    input_latency_ms: float | None = None  # the devices' own latency, as PortAudio reports it once open
    output_latency_ms: float | None = None
    latency: LatencySummary = field(default_factory=LatencySummary)  # mouth-to-ear (`latency.py`), filled by Engine

    @staticmethod
    def intervals_ms(times: list[float]) -> np.ndarray:
        return np.diff(np.asarray(times)) * 1000.0


class AudioDevices:
    """A microphone and a speaker opened as 20 ms blocks, with the queues and counters the engine reads.

    `choose()` finds the devices and how to open them (nothing opens); `open()` starts both streams;
    `close_input()` then `play_out_and_close()` stop them. `echo`, when set, gets every block the speaker plays.
    `speaker=False` opens the microphone alone (speech-to-text: nothing to play).
    """

    def __init__(self, input_device: str | int | None = None, output_device: str | int | None = None,
                 samplerate: int | None = None, speaker: bool = True):
        self.input_device, self.output_device, self.samplerate = input_device, output_device, samplerate
        self.has_speaker = speaker
        self.stats = EngineStats()
        self.echo: EchoCanceller | None = None
        self.mic: queue.Queue[MicBlock] = queue.Queue(maxsize=MIC_BLOCKS_KEPT)
        self.speaker: SpeakerQueue | None = None  # Moshi's voice waiting for the output callback, once chosen
        self.input_stream: Any = None
        self.output_stream: Any = None
        self._in_times: deque[float] = deque(maxlen=TIMES_KEPT)
        self._out_times: deque[float] = deque(maxlen=TIMES_KEPT)
        self._first_input: float | None = None
        self._in_rate = SAMPLE_RATE  # the microphone's rate, once chosen
        self._gathered: list[np.ndarray] = []  # the microphone's blocks of the frame being gathered
        self._gathered_adc = 0.0  # the ADC time of its first sample
        self._captured = 0  # the microphone's samples so far
        self._next_frame_end = 0  # the sample count at which the frame being gathered is complete
        self._frame_in = FRAME_SIZE  # a frame at the microphone's rate

    def choose(self) -> None:
        """Find both devices and the settings they take (`stats.input`, `stats.output`); opens nothing."""
        sounddevice()
        output = (stream_settings(find_device(self.output_device, "output"), "output", self.samplerate)
                  if self.has_speaker else None)
        self._use(stream_settings(find_device(self.input_device, "input"), "input", self.samplerate), output)

    def _use(self, input_settings: StreamSettings, output_settings: StreamSettings | None) -> None:
        self.stats.input, self.stats.output = input_settings, output_settings
        self._in_rate = input_settings.samplerate
        if output_settings is not None:
            self.speaker = SpeakerQueue(output_settings.samplerate, output_settings.blocksize, self.stats)
        self._frame_in = round(FRAME_SIZE * self._in_rate / SAMPLE_RATE)
        self._next_frame_end = self._frame_in + resampler_hold_back(self._in_rate, input_settings.blocksize)

    def open(self) -> None:
        """Open and start the speaker, then the microphone; MoshiError when a device refuses."""
        sd = sounddevice()
        in_settings, out_settings = self.stats.input, self.stats.output
        assert in_settings is not None and (out_settings or not self.has_speaker), "choose() the devices first"
        try:
            if out_settings is not None:
                self.output_stream = sd.OutputStream(
                    device=out_settings.device, samplerate=out_settings.samplerate, channels=out_settings.channels,
                    blocksize=out_settings.blocksize, dtype="float32", callback=self._on_output, latency=LATENCY,
                )
            self.input_stream = sd.InputStream(
                device=in_settings.device, samplerate=in_settings.samplerate, channels=in_settings.channels,
                blocksize=in_settings.blocksize, dtype="float32", callback=self._on_input, latency=LATENCY,
            )
            if self.output_stream is not None:
                self.output_stream.start()
            self.input_stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise MoshiError(f"cannot open the audio devices: {e}") from None
        self._note_latencies()

    def _note_latencies(self) -> None:
        """The devices' own latency, as the open streams report it."""
        self.stats.input_latency_ms = 1000 * float(self.input_stream.latency)
        if self.output_stream is not None:
            self.stats.output_latency_ms = 1000 * float(self.output_stream.latency)

    # --- the callbacks: PortAudio's threads, no waiting, no MLX ---

    def _on_input(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        start, cpu = time.monotonic(), time.thread_time()
        if self._first_input is None:
            self._first_input = start
        self._in_times.append(start)
        if status.input_overflow:
            self.stats.input_overflows += 1
        adc = to_monotonic(time_info.inputBufferAdcTime, time_info.currentTime, start, start - frames / self._in_rate)
        if not self._gathered:
            self._gathered_adc = adc
        self._gathered.append(indata.copy())
        self._captured += frames
        if self._captured >= self._next_frame_end:
            self._next_frame_end += self._frame_in
            self._queue_frame((np.concatenate(self._gathered), start, self._gathered_adc))
            self._gathered = []
        self.stats.callback_max_ms = max(self.stats.callback_max_ms, (time.thread_time() - cpu) * 1000)

    def _queue_frame(self, block: MicBlock) -> None:
        try:
            self.mic.put_nowait(block)
        except queue.Full:  # the loop is stalled: keep the newest audio
            with contextlib.suppress(queue.Empty):
                self.mic.get_nowait()
                self.stats.stalled_dropped += 1
            self.mic.put_nowait(block)
        self.stats.received += 1

    def _on_output(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        start, cpu = time.monotonic(), time.thread_time()
        self._out_times.append(start)
        if status.output_underflow:
            self.stats.output_underflows += 1
        dac = to_monotonic(time_info.outputBufferDacTime, time_info.currentTime, start, start)
        block = self.speaker.take(start, dac) if self.speaker is not None else None
        if block is None:
            outdata.fill(0)
            if self.speaker is not None and self.speaker.speaking:
                self.stats.underruns += 1
        else:
            self.stats.played += 1
            if self.stats.first_output_frames is None and self._first_input is not None:
                self.stats.first_output_frames = (start - self._first_input) * 1000 / FRAME_MS
            n = min(frames, len(block))
            outdata[:n] = block[:n, None]
            outdata[n:] = 0
        if self.echo is not None:  # the reference is exactly what the speaker gets, silence included
            self.echo.add_reference(outdata[:, 0], dac)
        self.stats.callback_max_ms = max(self.stats.callback_max_ms, (time.thread_time() - cpu) * 1000)

    # --- the engine's side ---

    def play(self, moshi: np.ndarray, tag: object = None, max_blocks: int | None = None) -> None:
        """Moshi's 24 kHz samples to the speaker's queue (`SpeakerQueue.put`)."""
        assert self.speaker is not None, "choose() the devices first"
        self.speaker.put(moshi, tag, max_blocks)

    def close_input(self) -> None:
        if self.input_stream is not None:
            self.input_stream.close()

    def play_out_and_close(self, seconds: float = PLAYOUT_S) -> None:
        """Let the speaker play what is queued (up to `seconds`), then close it; both streams are then gone."""
        if self.output_stream is not None:
            deadline = time.monotonic() + seconds
            while self.speaker and self.output_stream.active and time.monotonic() < deadline:  # (its length)
                time.sleep(0.01)
            self.output_stream.stop()  # plays what PortAudio already holds (two blocks at most)
            self.output_stream.close()
        self.input_stream = self.output_stream = None

    @property
    def played(self) -> deque[Played]:
        """Tagged frames whose first sample the speaker has taken (`SpeakerQueue.played`; the engine drains it)."""
        if not self.has_speaker:
            return deque()
        assert self.speaker is not None, "choose() the devices first"
        return self.speaker.played

    def count_leftovers(self) -> None:
        """Once closed: Moshi's blocks never played, and the microphone's blocks never processed (as dropped)."""
        self.stats.unplayed = len(self.speaker) if self.speaker is not None else 0
        while not self.mic.empty():
            self.mic.get_nowait()
            self.stats.dropped += 1

    def snapshot(self) -> EngineStats:
        """A copy of the stats, with the callbacks' times and all the dropped frames counted in `dropped`."""
        return dataclasses.replace(
            self.stats, dropped=self.stats.dropped + self.stats.stalled_dropped,
            input_times=list(self._in_times), output_times=list(self._out_times),
        )
