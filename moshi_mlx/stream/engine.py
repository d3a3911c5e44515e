"""The live conversation: microphone -> Moshi -> speaker, one 80 ms frame at a time.

A frame's story: the input callback queues the microphone's block; the encoder stage takes the newest blocks
(the lag policy), resamples them to 24 kHz frames, takes Moshi's own voice out of them (`echo.EchoCanceller`, whose
reference is what the output callback gave the speaker) and has Mimi encode one; the inference thread runs Moshi's
step on it; the decoder stage has Mimi decode Moshi's frame and queues it for the output callback, which plays it.
The three stages overlap (`frame_loop.run_frame_loop`): while the LM steps on frame t, frame t+1 is encoded and frame
t-1 decoded. The callbacks only move numpy blocks (no waiting, no MLX, one small copy). Lag policy: when more than
`max_backlog` input frames wait, the oldest are dropped (and counted); when Moshi's audio is late, the speaker plays
silence (an underrun, counted). Stopping plays out what Moshi already said, up to `PLAYOUT_S`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlx_lm.generate import wired_limit

from ..errors import MoshiError
from .audio_io import Chunker, StreamResampler, StreamSettings, find_device, sounddevice, stream_settings
from .echo.canceller import CleanedMicrophone, EchoCanceller, EchoSettings, make_echo_canceller
from .frame_loop import run_frame_loop
from .pipeline import FrameEvent, Pipeline

FRAME_MS = 80.0
TIMES_KEPT = 4096  # callback timestamps kept for the stats (about 5 minutes)
MIC_BLOCKS_KEPT = 64  # input blocks held while the loop is stalled (about 5 s); older ones are dropped
PLAYOUT_S = 0.5  # on stop, Moshi's queued audio is played for up to this long


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


class Engine:
    """A live, full-duplex conversation on sound devices; a context manager (start on enter, stop on exit).

    Events (`FrameEvent`, one per processed frame) go to `on_event` on the inference thread when given, else
    to the `events` queue, which a UI drains from its own thread. `recorder` (`write(user, moshi)`, `close()`)
    and `transcript` (`write(piece)`, `close()`) are fed on the inference thread and closed by `stop()`.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        max_backlog: int = 2,
        on_event: Callable[[FrameEvent], None] | None = None,
        recorder: Any = None,
        transcript: Any = None,
        warmup_frames: int = 2,
        samplerate: int | None = None,
        max_output_backlog: int = 4,
        aec: bool = False,
    ):
        if max_backlog < 0:
            raise ValueError("max_backlog must be >= 0")
        self.pipeline = pipeline
        self.input_device, self.output_device = input_device, output_device
        self.max_backlog, self.max_output_backlog = max_backlog, max_output_backlog
        self.events: queue.Queue[FrameEvent] = queue.Queue(maxsize=1024)
        self.on_event = on_event or self._queue_event
        self.recorder, self.transcript = recorder, transcript
        self.warmup_frames = warmup_frames
        self.samplerate = samplerate
        self.aec = aec
        self.echo: EchoCanceller | None = None  # made by start() when `aec`, None if livekit cannot load
        self._cleaned: CleanedMicrophone | None = None
        self.error: BaseException | None = None
        self._stats = EngineStats()
        self._mic: queue.Queue[np.ndarray] = queue.Queue(maxsize=MIC_BLOCKS_KEPT)
        self._speaker: deque[np.ndarray] = deque()
        self._in_times: deque[float] = deque(maxlen=TIMES_KEPT)
        self._out_times: deque[float] = deque(maxlen=TIMES_KEPT)
        self._first_input: float | None = None
        self._speaking = False  # Moshi's first block has been queued
        self._backlog = 0  # input frames waiting when the current one was taken
        self._stop = threading.Event()
        self._ready = threading.Event()  # the inference thread has warmed up (or failed to)
        self._thread: threading.Thread | None = None
        self._input_stream: Any = None
        self._output_stream: Any = None
        self._closed = False

    # --- the callbacks: PortAudio's threads, no waiting, no MLX ---

    def _on_input(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        start = time.monotonic()
        if self._first_input is None:
            self._first_input = start
        self._in_times.append(start)
        if status.input_overflow:
            self._stats.input_overflows += 1
        block = (indata.copy(), start, time_info.inputBufferAdcTime)
        try:
            self._mic.put_nowait(block)
        except queue.Full:  # the loop is stalled: keep the newest audio
            with contextlib.suppress(queue.Empty):
                self._mic.get_nowait()
                self._stats.stalled_dropped += 1
            self._mic.put_nowait(block)
        self._stats.received += 1
        self._stats.callback_max_ms = max(self._stats.callback_max_ms, (time.monotonic() - start) * 1000)

    def _on_output(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        start = time.monotonic()
        self._out_times.append(start)
        if status.output_underflow:
            self._stats.output_underflows += 1
        try:
            block = self._speaker.popleft()
        except IndexError:
            outdata.fill(0)
            if self._speaking:
                self._stats.underruns += 1
        else:
            self._stats.played += 1
            if self._stats.first_output_frames is None and self._first_input is not None:
                self._stats.first_output_frames = (start - self._first_input) * 1000 / FRAME_MS
            n = min(frames, len(block))
            outdata[:n] = block[:n, None]
            outdata[n:] = 0
        if self.echo is not None:  # the reference is exactly what the speaker gets, silence included
            self.echo.add_reference(outdata[:, 0], time_info.outputBufferDacTime)
        self._stats.callback_max_ms = max(self._stats.callback_max_ms, (time.monotonic() - start) * 1000)

    # --- the inference thread ---

    def _queue_event(self, event: FrameEvent) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:  # nobody is listening: keep the newest
            with contextlib.suppress(queue.Empty):
                self.events.get_nowait()
            with contextlib.suppress(queue.Full):
                self.events.put_nowait(event)

    def _next_block(self) -> np.ndarray | None:
        """The next input block to process, after applying the lag policy; None when stopping."""
        while not self._stop.is_set():
            try:
                block = self._mic.get(timeout=0.05)
            except queue.Empty:
                continue
            while self._mic.qsize() > self.max_backlog:
                self._stats.dropped += 1
                if self.echo is not None and self._cleaned is not None:
                    self._cleaned(*block)  # the canceller hears every block; the frames are dropped after
                block = self._mic.get_nowait()
            self._backlog = self._mic.qsize()
            return block
        return None

    def _run(self) -> None:
        # On a Mac, keep the model's memory wired for the conversation (mlx-lm's helper; nothing elsewhere), so
        # the system cannot page the weights out between frames.
        with wired_limit(self.pipeline.gen.lm):
            self._converse()

    def _converse(self) -> None:
        # All of a conversation's MLX work (warm-up, compilation, every step) happens on this one thread: MLX's
        # GPU streams belong to the thread that made them, so a graph built or traced on another thread fails on
        # Metal ("There is no Stream(gpu, N) in current thread").
        try:
            self.pipeline.warmup(self.warmup_frames)
        except BaseException as e:
            self.error = e
            return
        finally:
            self._ready.set()
        settings_out = self._stats.output
        assert settings_out is not None
        self._to_speaker = StreamResampler(self.pipeline.sample_rate, settings_out.samplerate)
        self._blocks = Chunker(settings_out.blocksize)
        try:
            run_frame_loop(self.pipeline, self._microphone_frames(), self._deliver, stop=self._stop)
        except BaseException as e:  # reported by stop(); the UI sees `running` turn False
            self.error = e

    def _microphone_frames(self) -> Iterator[np.ndarray]:
        """The microphone as 24 kHz frames, after the lag policy; ends when the engine stops (encoder stage)."""
        settings_in = self._stats.input
        assert settings_in is not None
        self._cleaned = CleanedMicrophone(self.echo, settings_in.samplerate, self.pipeline.frame_size)
        while (block := self._next_block()) is not None:
            yield from self._cleaned(*block)

    def _deliver(self, event: FrameEvent, frame: np.ndarray, pcm: np.ndarray | None) -> None:
        """Moshi's frame to the speaker queue, the frame to the recording and transcript, the event to the UI."""
        self._stats.processed += 1
        if pcm is not None:
            for out in self._blocks(self._to_speaker(pcm)):
                self._speaker.append(out)
                self._speaking = True
            while len(self._speaker) > self.max_output_backlog:
                self._speaker.popleft()
                self._stats.output_dropped += 1
        if self.recorder is not None:
            self.recorder.write(frame, pcm)
        if self.transcript is not None:
            self.transcript.write(event.text)
        self.on_event(
            dataclasses.replace(
                event, backlog=self._backlog, dropped=self._stats.dropped + self._stats.stalled_dropped,
                underruns=self._stats.underruns,
                echo_db=self.echo.echo_reduction_db() if self.echo is not None else None,
            )
        )

    # --- lifecycle ---

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Engine:
        """Check the devices, start the inference thread (it warms the model up), then open the devices."""
        sd = sounddevice()
        in_settings = stream_settings(find_device(self.input_device, "input"), "input", self.samplerate)
        out_settings = stream_settings(find_device(self.output_device, "output"), "output", self.samplerate)
        self._stats.input, self._stats.output = in_settings, out_settings
        if self.aec and self.echo is None:
            self.echo = make_echo_canceller(True, EchoSettings(reference_rate=out_settings.samplerate))
        self._thread = threading.Thread(target=self._run, name="moshi-inference", daemon=True)
        self._thread.start()
        self._ready.wait()  # the warm-up, on the inference thread; the devices open after it
        if self.error is not None:
            self._thread.join()
            error, self.error = self.error, None
            raise error
        try:
            self._output_stream = sd.OutputStream(
                device=out_settings.device, samplerate=out_settings.samplerate, channels=out_settings.channels,
                blocksize=out_settings.blocksize, dtype="float32", callback=self._on_output,
            )
            self._input_stream = sd.InputStream(
                device=in_settings.device, samplerate=in_settings.samplerate, channels=in_settings.channels,
                blocksize=in_settings.blocksize, dtype="float32", callback=self._on_input,
            )
            self._output_stream.start()
            self._input_stream.start()
        except (sd.PortAudioError, ValueError) as e:
            self._shutdown()
            raise MoshiError(f"cannot open the audio devices: {e}") from None
        return self

    def _shutdown(self) -> None:
        # The input first, so that no frame arrives once the inference thread has stopped.
        try:
            if self._input_stream is not None:
                self._input_stream.close()
        finally:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()  # the frames already taken go through to the speaker queue
            if self._output_stream is not None:
                deadline = time.monotonic() + PLAYOUT_S
                while self._speaker and self._output_stream.active and time.monotonic() < deadline:
                    time.sleep(0.01)
                self._output_stream.stop()  # plays what PortAudio already holds (two blocks at most)
                self._output_stream.close()
            self._input_stream = self._output_stream = None

    def stop(self) -> EngineStats:
        """Close the devices, stop the inference thread, close the recorder and transcript; returns the stats.

        Re-raises an error of the inference thread after cleaning up. Safe to call more than once.
        """
        if not self._closed:
            self._closed = True
            try:
                self._shutdown()
            finally:
                self._stats.unplayed = len(self._speaker)
                while not self._mic.empty():  # received but never processed
                    self._mic.get_nowait()
                    self._stats.dropped += 1
                for sink in (self.recorder, self.transcript):
                    if sink is not None:
                        sink.close()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.stats()

    def stats(self) -> EngineStats:
        return dataclasses.replace(
            self._stats, dropped=self._stats.dropped + self._stats.stalled_dropped,
            input_times=list(self._in_times), output_times=list(self._out_times),
        )

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
