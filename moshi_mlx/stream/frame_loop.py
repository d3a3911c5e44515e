"""The pipelined frame loop: Mimi's encoder, the LM and Mimi's decoder work on three frames at once.

While the LM runs frame t on the calling (inference) thread, a worker encodes frame t+1 and another decodes frame
t-1, so a frame costs its slowest stage instead of their sum. Each stage takes a frame as soon as the one before
hands it over and the next has room, so a frame waits at most one frame behind a busy stage. When the LM is the
slowest stage, the next frame is already encoded when a step is submitted: its step is then built while this one
computes (`LmGen.submit` / `collect`), and the device does not wait for Python between frames. Codecs that run
MLX (`runs_off_thread` False) keep the three stages on the calling thread, one after the other.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

import numpy as np

from ..threads import mlx_thread
from .pipeline import Frame, FrameEvent, Pipeline, as_frame

Sink = Callable[[FrameEvent, np.ndarray, "np.ndarray | None"], None]
_END = None  # what a stage passes on after the last frame (or after an error)
_POLL_S = 0.05


class _Stopped(Exception):
    """Another stage failed: this one leaves quietly."""


def run_frame_loop(
    pipeline: Pipeline,
    frames: Iterable[np.ndarray | Frame],
    sink: Sink,
    overlap: bool | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run every frame of `frames` through the pipeline; `sink(event, user_frame, moshi_pcm)` gets them in order.

    `frames` (samples, or `Frame`s carrying their capture times) is iterated on the encoder's thread (it may
    block, e.g. on a microphone; it ends the loop by ending, and should end once `stop` is set). `sink` runs on
    the decoder's thread. Returns once every frame taken has reached the sink; an error in any stage (`frames`
    and `sink` included) sets `stop`, stops the other stages and is raised here.
    """
    if overlap is None:
        overlap = pipeline.codec.runs_off_thread
    if not overlap:
        for user in frames:
            frame = as_frame(user)
            event, pcm = pipeline.step(frame)
            sink(event, frame.user, pcm)
        return
    _Overlapped(pipeline, frames, sink, stop).run()


class _Overlapped:
    def __init__(self, pipeline: Pipeline, frames: Iterable[np.ndarray | Frame], sink: Sink,
                 stop: threading.Event | None):
        self.pipeline, self.frames, self.sink, self.stop = pipeline, frames, sink, stop
        self.encoded: queue.Queue[Frame | None] = queue.Queue(maxsize=1)
        self.stepped: queue.Queue[Frame | None] = queue.Queue(maxsize=1)
        # The encoder starts a frame only once the LM has taken the frame two before it: when the LM is the
        # slowest stage, the frame after the one it computes is then ready to be submitted.
        self.room = threading.Semaphore(2)
        self.failed = threading.Event()
        self.error: BaseException | None = None
        self._error_lock = threading.Lock()

    def _fail(self, error: BaseException) -> None:
        with self._error_lock:
            if self.error is None:
                self.error = error
        self.failed.set()
        if self.stop is not None:
            self.stop.set()

    def _put(self, q: queue.Queue[Frame | None], item: Frame | None) -> None:
        while True:
            if self.failed.is_set() and item is not _END:
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self.failed.is_set():
                    raise _Stopped from None

    def _get_ready(self, q: queue.Queue[Frame | None]) -> Frame | None | bool:
        """What `q` holds now, or False when it is empty."""
        try:
            return q.get_nowait()
        except queue.Empty:
            return False

    def _get(self, q: queue.Queue[Frame | None]) -> Frame | None:
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if self.failed.is_set():
                    return _END

    def _acquire_room(self) -> None:
        while not self.room.acquire(timeout=_POLL_S):
            if self.failed.is_set():
                raise _Stopped

    def _encoder(self) -> None:
        try:
            frames = iter(self.frames)
            while True:
                self._acquire_room()
                user = next(frames, None)
                if user is None:
                    break
                self._put(self.encoded, self.pipeline.encode(as_frame(user)))
        except _Stopped:
            pass
        except BaseException as e:
            self._fail(e)
        finally:
            self._put_end(self.encoded)

    def _decoder(self) -> None:
        try:
            while (frame := self._get(self.stepped)) is not _END:
                event, pcm = self.pipeline.decode(frame, overlapped=True)
                self.sink(event, frame.user, pcm)
        except BaseException as e:
            self._fail(e)

    def _put_end(self, q: queue.Queue[Frame | None]) -> None:
        # The end marker must get through even past a full queue whose reader has stopped.
        while True:
            try:
                q.put(_END, timeout=_POLL_S)
                return
            except queue.Full:
                if self.failed.is_set():
                    return

    def _lm_stage(self) -> None:
        """The LM's stage: each frame submitted, and collected once the next one is submitted or none is ready."""
        pending: Frame | None = None
        while True:
            frame = self._get(self.encoded) if pending is None else self._get_ready(self.encoded)
            if frame is False:  # nothing ready: no reason to make this frame wait
                self._put(self.stepped, self.pipeline.collect(pending))
                pending = None
                continue
            if frame is _END:
                if pending is not None:
                    self._put(self.stepped, self.pipeline.collect(pending))
                return
            self.room.release()
            submitted = self.pipeline.submit(frame)
            if pending is not None:
                self._put(self.stepped, self.pipeline.collect(pending))
            pending = submitted

    def run(self) -> None:
        workers = [
            mlx_thread(self._encoder, name="moshi-encoder", daemon=True),
            mlx_thread(self._decoder, name="moshi-decoder", daemon=True),
        ]
        for worker in workers:
            worker.start()
        try:
            self._lm_stage()
        except _Stopped:
            pass
        except BaseException as e:
            self._fail(e)
        finally:
            self._put_end(self.stepped)
            self.room.release()
            for worker in workers:
                worker.join()
        if self.error is not None:
            raise self.error
