"""The live conversation: microphone -> Moshi -> speaker, one 80 ms frame at a time.

A frame's walk, with the thread that does each step and the code that does it:

1. microphone: PortAudio's input callback gathers the device's 20 ms blocks and queues each frame's worth as soon
   as it is complete (`AudioDevices._on_input`, devices.py).
2. lag policy: the encoder thread takes the next one; when more than `max_backlog` wait behind it, the oldest
   are dropped and counted (`Engine._next_mic_block`).
3. resample: it becomes a 24 kHz mono frame (`CleanedMicrophone`, echo/canceller.py, encoder thread).
4. echo cancel: Moshi's own voice is taken out of each frame (`EchoCanceller.clean`, when `aec`), the reference
   being what the speaker played (step 8).
5. encode: Mimi turns the frame into codes (`Pipeline.encode`, encoder thread).
6. LM: Moshi's step gives a text token and its audio codes (`Pipeline.submit` / `collect`, inference thread).
7. decode: Mimi turns Moshi's codes into 80 ms of its voice (`Pipeline.decode`, decoder thread).
8. speaker: Moshi's frame is resampled to the device's rate and queued as device blocks, the oldest dropped beyond
   `max_output_backlog` frames and a surplus left by a hiccup trimmed (`Engine._play_and_record` ->
   `SpeakerQueue.put`, decoder thread); the output callback plays them, silence when Moshi is late (an underrun,
   counted), and hands what it played to the canceller (`AudioDevices._on_output`). The frame then goes to the
   recording, the transcript and the UI (`FrameOutputs`).

Each of Moshi's frames is timed from the ADC time of the user's frame it answers to the DAC time of its own first
sample (mouth-to-ear latency, `latency.py`): `latency`, and `latency_ms` on the events.

`Engine._converse` strings the steps together on the inference thread: `frame_loop.run_frame_loop` overlaps the
encoder, LM and decoder stages (while the LM steps on frame t, frame t+1 is encoded and frame t-1 decoded); with a
codec that runs MLX, the encoder and decoder steps run on the inference thread too. The callbacks only move numpy
blocks (no waiting, no MLX). Stopping plays out what Moshi already said, up to `devices.PLAYOUT_S`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from ..errors import MoshiError
from ..model import mlx_lm_parts
from ..threads import mlx_thread
from .audio_io import BLOCKS_PER_FRAME
from .devices import AudioDevices, EngineStats, MicBlock
from .echo.canceller import CleanedMicrophone, EchoCanceller, EchoSettings, make_echo_canceller
from .frame_loop import run_frame_loop
from .latency import FrameTimes, LatencyMeter, measure
from .outputs import FrameOutputs
from .pipeline import Frame, FrameEvent, Pipeline

__all__ = ["Engine", "EngineStats"]


class Engine:
    """A live, full-duplex conversation on sound devices; a context manager (start on enter, stop on exit).

    Events (`FrameEvent`, one per processed frame) go to `on_event` on the thread that decodes (step 8 above) when
    given, else to the `events` queue, which a UI drains from its own thread. `recorder` (`write(user, moshi)`,
    `close()`) and `transcript` (`write(piece)`, `close()`) are fed on that thread too, and closed by `stop()`.
    `devices` replaces the sound devices (e.g. a network connection, `moshi_mlx.server`); `executor` runs the
    inference thread's work on its own thread instead of a new one (a server runs all its conversations on one
    thread: MLX's compiled steps belong to the thread that traced them).
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
        devices: AudioDevices | None = None,
        executor: Executor | None = None,
        tail_frames: int = 0,
        on_prefill: Callable[[int, int], None] | None = None,
    ):
        if max_backlog < 0:
            raise ValueError("max_backlog must be >= 0")
        self.pipeline = pipeline
        self.devices = devices or AudioDevices(input_device, output_device, samplerate)
        self.latency = LatencyMeter()  # mouth-to-ear, measured as Moshi's frames reach the speaker (`latency.py`)
        self._previous: FrameTimes | None = None  # the last frame's times: the origin of the next frame's voice
        self.max_backlog, self.max_output_backlog = max_backlog, max_output_backlog
        self.events: queue.Queue[FrameEvent] = queue.Queue(maxsize=1024)
        self.on_event = on_event or self._queue_event
        self.outputs = FrameOutputs(recorder, transcript, self._report)
        self.warmup_frames = warmup_frames
        self.on_prefill = on_prefill  # (done, total) steps of the persona, fed after the warm-up
        self.prefill_report: Any = None  # what feeding the persona cost (`PrefillReport`), once started
        # Frames of silence run once the microphone has closed: a speech-to-text model writes the last words its
        # delay later (`tail_frames`).
        self.tail_frames = tail_frames
        self.aec = aec
        self.error: BaseException | None = None
        self._cleaned: CleanedMicrophone | None = None
        self._backlog = 0  # input frames waiting when the current one was taken
        self._stop = threading.Event()
        self._ready = threading.Event()  # the inference thread has warmed up (or failed to)
        self._thread: threading.Thread | None = None
        self.executor = executor
        self._future: Future | None = None  # the conversation, when it runs on `executor`
        self._closed = False

    @property
    def echo(self) -> EchoCanceller | None:
        """The echo canceller: made by `start()` when `aec`, None without or if livekit cannot load."""
        return self.devices.echo

    @echo.setter
    def echo(self, canceller: EchoCanceller | None) -> None:
        self.devices.echo = canceller

    # --- the inference thread, and the stages it drives ---

    def _converse(self) -> None:
        """The inference thread: warm the model up, then walk every frame from the microphone to the speaker."""
        # All of a conversation's MLX work (warm-up, compilation, every step) happens on this one thread: MLX's
        # GPU streams belong to the thread that made them, so a graph built or traced on another thread fails on
        # Metal ("There is no Stream(gpu, N) in current thread").
        # On a Mac, keep the model's memory wired for the conversation (mlx-lm's helper; nothing elsewhere), so
        # the system cannot page the weights out between frames.
        with mlx_lm_parts.wired_limit(self.pipeline.gen.lm):
            if not self._warm_up():
                return
            try:
                run_frame_loop(self.pipeline, self._cleaned_microphone_frames(), self._play_and_record,
                               stop=self._stop)
            except BaseException as e:  # reported by stop(); the UI sees `running` turn False
                self.error = e

    def _warm_up(self) -> bool:
        """Compile and allocate on a few frames of silence, then feed the persona if any (before the devices open);
        False (the error kept for `start`) when that fails."""
        try:
            self.pipeline.warmup(self.warmup_frames)
            if self.pipeline.persona is not None:
                self.prefill_report = self.pipeline.new_conversation(self.on_prefill)
            return True
        except BaseException as e:
            self.error = e
            return False
        finally:
            self._ready.set()

    def _cleaned_microphone_frames(self) -> Iterator[Frame]:
        """The microphone as 24 kHz frames, resampled and echo-cancelled; ends when the engine stops (encoder)."""
        settings_in = self.devices.stats.input
        assert settings_in is not None
        self._cleaned = cleaned = CleanedMicrophone(self.echo, settings_in.samplerate, self.pipeline.frame_size)
        while (block := self._next_mic_block()) is not None:
            arrived = block[1]
            for samples, captured in zip(cleaned(*block), cleaned.captured, strict=True):
                yield Frame(samples, times=FrameTimes(captured=captured, arrived=arrived))
        for _ in range(self.tail_frames):
            yield Frame(np.zeros(self.pipeline.frame_size, np.float32))

    def _next_mic_block(self) -> MicBlock | None:
        """The next input block to process, after applying the lag policy; None when stopping."""
        mic, stats = self.devices.mic, self.devices.stats
        while not self._stop.is_set():
            try:
                block = mic.get(timeout=0.05)
            except queue.Empty:
                continue
            while mic.qsize() > self.max_backlog:
                stats.dropped += 1
                if self.echo is not None and self._cleaned is not None:
                    self._cleaned(*block)  # the canceller hears every block; the frames are dropped after
                block = mic.get_nowait()
            self._backlog = mic.qsize()
            return block
        return None

    def _play_and_record(self, event: FrameEvent, frame: np.ndarray, pcm: np.ndarray | None) -> None:
        """Moshi's frame to the speaker queue, then the frame to the recording, the transcript and the UI (decoder)."""
        self.devices.stats.processed += 1
        if pcm is not None:
            # Moshi's frame made at this step answers the user's frame of the step before at the earliest.
            tag = (self._previous, event.times) if self._previous is not None else None
            self.devices.play(pcm, tag, max_blocks=self.max_output_backlog * BLOCKS_PER_FRAME)
        self._previous = event.times
        self.outputs(event, frame, pcm)

    def _measure_played(self) -> None:
        """The latency of each of Moshi's frames whose first sample the speaker has taken since the last call."""
        played = self.devices.played
        while played:
            (origin, step), callback, dac, offset = played.popleft()
            if origin is not None and origin.captured is not None and step.captured is not None:
                self.latency.add(measure(origin, step, callback, dac, offset))

    def _report(self, event: FrameEvent) -> None:
        """The event, with the state of the live queues filled in, to `on_event`."""
        stats = self.devices.stats
        self._measure_played()
        self.on_event(
            dataclasses.replace(
                event, backlog=self._backlog, dropped=stats.dropped + stats.stalled_dropped,
                underruns=stats.underruns, echo_db=self.echo.echo_reduction_db() if self.echo is not None else None,
                latency_ms=self.latency.recent_ms(),
            )
        )

    def _queue_event(self, event: FrameEvent) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:  # nobody is listening: keep the newest
            with contextlib.suppress(queue.Empty):
                self.events.get_nowait()
            with contextlib.suppress(queue.Full):
                self.events.put_nowait(event)

    # --- lifecycle ---

    @property
    def running(self) -> bool:
        if self._future is not None:
            return not self._future.done()
        return self._thread is not None and self._thread.is_alive()

    def _join(self) -> None:
        if self._future is not None:
            self._future.exception()  # waits; `_converse` keeps its errors in `self.error`
        elif self._thread is not None:
            self._thread.join()

    def start(self) -> Engine:
        """Check the devices, start the inference thread (it warms the model up), then open the devices."""
        self.devices.choose()
        if self.aec and self.echo is None:
            self.echo = make_echo_canceller(True, EchoSettings(reference_rate=self.devices.stats.output.samplerate))
        if self.executor is not None:
            self._future = self.executor.submit(self._converse)
        else:
            self._thread = mlx_thread(self._converse, name="moshi-inference", daemon=True)
            self._thread.start()
        self._ready.wait()  # the warm-up, on the inference thread; the devices open after it
        if self.error is not None:
            self._join()
            error, self.error = self.error, None
            raise error
        try:
            self.devices.open()
        except MoshiError:
            self._shutdown()
            raise
        return self

    def _shutdown(self) -> None:
        # The input first, so that no frame arrives once the inference thread has stopped.
        try:
            self.devices.close_input()
        finally:
            self._stop.set()
            self._join()  # the frames already taken go through to the speaker queue
            self.devices.play_out_and_close()

    def stop(self) -> EngineStats:
        """Close the devices, stop the inference thread, close the recorder and transcript; returns the stats.

        Re-raises an error of the inference thread after cleaning up. Safe to call more than once.
        """
        if not self._closed:
            self._closed = True
            try:
                self._shutdown()
            finally:
                self.devices.count_leftovers()
                self.outputs.close()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.stats()

    def stats(self) -> EngineStats:
        """The counters so far; with the latency's summary (complete once stopped)."""
        if not self.running:  # else the decoder thread measures
            self._measure_played()
        return dataclasses.replace(self.devices.snapshot(), latency=self.latency.summary())

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
