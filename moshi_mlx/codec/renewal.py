"""Codec renewal: a streaming codec with a position limit replaced, before it reaches it, by a primed successor.

Mimi's transformers attend to the last 250 steps (10 s) and their rotary positions are relative, so a fresh stream
fed the last `prime_frames` inputs of the old one carries on where the old one is, up to rounding. The successor
is loaded and primed on a thread of its own, at the lowest scheduling priority, while the old stream keeps working;
it then follows the new inputs until it has caught up, and takes over at a frame boundary. A stream that fails is
replaced at once, primed the same way, and the frame retried.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import first_line
from ..threads import mlx_thread

In = TypeVar("In")
Out = TypeVar("Out")
Step = Callable[[In], Out]

log = logging.getLogger(__name__)
THROTTLE_S = 0.5  # the longest a caller waits at once for a successor that fell behind
PRIO_DARWIN_THREAD, PRIO_DARWIN_BG = 3, 0x1000  # macOS's <sys/resource.h>: the calling thread, its background band


def lower_priority() -> None:
    """Run the calling thread at the lowest priority: it gets only the CPU that other threads leave."""
    try:
        if sys.platform == "darwin":
            os.setpriority(PRIO_DARWIN_THREAD, 0, PRIO_DARWIN_BG)
        elif sys.platform.startswith("linux"):  # a thread is a task of its own there, with its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):  # not allowed, or no setpriority (Windows): normal priority
        pass


class RenewingStream(Generic[In, Out]):
    """One direction of a streaming codec (the encoder or the decoder), renewed every `renew_every` frames.

    `start()` makes a fresh stream: a function taking one frame's input to its output. `limit` is the number of
    frames a stream can take, priming included; a renewal starts once the stream has served `renew_every` frames.
    The successor primes on a thread at the lowest priority, so it takes only the CPU the caller's loop leaves, and
    the caller does not wait for it for half a period (`renew_every // 2` frames, less when the limit is closer):
    live, a loop with headroom leaves it enough to be ready by then. Past that, the caller waits at each frame
    until the successor has taken two more (at most `THROTTLE_S`), so that it gains a frame at every frame (frames
    run flat out, as in a file, would otherwise outrun it until the limit); only at `limit` does the caller wait
    for it in full (logged).
    `blend(old, new)` joins the two outputs of the frame where the successor takes over (e.g. a crossfade of
    decoded audio); by default the successor's is used. `notify` gets one line when a failed stream had to be
    replaced; `released()` is called once an old stream has been let go (e.g. to hand its memory back).
    `first_after` (default `renew_every`) moves the first renewal, so that two streams do not renew at once.
    Streams sharing a `slot` (a `threading.Semaphore(1)`) prime one successor at a time: a stream whose renewal
    is due waits for the slot while it serves frames, and starts without it only when its limit comes so close
    that the successor would otherwise be late (a successor holds a second copy of the codec's weights).
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], Step],
        limit: int,
        renew_every: int,
        prime_frames: int = 130,
        first_after: int | None = None,
        blend: Callable[[Out, Out], Out] | None = None,
        notify: Callable[[str], None] | None = None,
        released: Callable[[], None] | None = None,
        slot: threading.Semaphore | None = None,
    ):
        if not (prime_frames > 0 and renew_every > 0 and prime_frames + renew_every < limit):
            raise ValueError(f"need prime_frames ({prime_frames}) + renew_every ({renew_every}) < limit ({limit})")
        self.name, self.limit, self.renew_every, self.prime_frames = name, limit, renew_every, prime_frames
        self._start, self._blend, self._notify, self._released = start, blend, notify, released
        self._slot, self._holds_slot = slot, False
        # Past this position a due renewal starts even while another stream holds the slot: room to prime and
        # catch up twice over, since a successor catches up slowly on a busy machine.
        self._last_start = limit - 4 * prime_frames
        self._step: Step = start()
        self._position = 0  # frames the current stream has taken
        # Of those, frames whose output was used (counted from renew_every - first_after for the first stream).
        self._served = renew_every - (renew_every if first_after is None else first_after)
        self._history: deque[In] = deque(maxlen=prime_frames)
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)  # the successor took a frame, or is ready, or failed
        self._primer: threading.Thread | None = None
        self._pending: deque[In] = deque()  # inputs the successor still has to take
        self._successor: tuple[Step, int] | None = None  # (stream, its position) once caught up
        self._primer_error: BaseException | None = None
        self._steps = 0  # inputs the successor has taken (replayed history, then pending frames)
        self._steps_before = 0  # ...when the caller's last frame came
        self._throttle_from = 0  # the position from which the caller makes the successor gain on it
        self._cancel = threading.Event()  # close(): a successor being primed stops at its next frame
        self.renewals = 0
        self.waited_s = 0.0  # time the caller spent waiting for a successor that was late

    def __call__(self, x: In) -> Out:
        # A successor that spent long catching up starts with less room: renew it early enough too.
        due = self._served >= self.renew_every or self._position + self.renew_every >= self.limit
        if self._primer is None and due and self._may_begin():
            self._begin_renewal()
        if self._primer is not None and self._position >= self.limit - 1:
            self._wait_for_successor()  # the old stream is full
        elif self._primer is not None and self._position >= self._throttle_from:
            # Let the successor catch up, a little at a time: a caller that waited until it was done could not
            # stop (or keep a live loop going) before a slow machine had primed it.
            self._wait_for_successor(timeout=THROTTLE_S, steps=2)
        with self._lock:
            successor, self._successor = self._successor, None
            if successor is None and self._primer is not None:
                self._pending.append(x)
                self._steps_before = self._steps
        try:
            if successor is not None:
                out = self._take_over(successor, x)
            else:
                out = self._step(x)
                self._position += 1
                self._served += 1
        except Exception as e:
            out = self._recover(x, e)
        self._history.append(x)
        return out

    @property
    def renewing(self) -> bool:
        """A successor is being primed or catching up."""
        return self._primer is not None

    def _may_begin(self) -> bool:
        if self._slot is None:
            return True
        self._holds_slot = self._slot.acquire(blocking=False)
        if not self._holds_slot and self._position >= self._last_start:
            log.info("Mimi %s: renewing at frame %d beside another successor", self.name, self._position)
            return True
        return self._holds_slot

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            assert self._slot is not None
            self._slot.release()

    def _begin_renewal(self) -> None:
        snapshot = list(self._history)
        self._primer_error = None
        self._steps = self._steps_before = 0
        # The successor's own time: once over, the caller makes it gain a frame at every frame, and it still has
        # room to prime and take what is pending before the limit.
        room = (self.limit - 1 - self.prime_frames - self._position) // 2
        self._throttle_from = self._position + max(0, min(self.renew_every // 2, room))
        self._primer = mlx_thread(
            self._prime, args=(snapshot,), name=f"mimi-{self.name}-renewal"
        )  # not a daemon: killing it inside the codec's native code at exit would abort the process
        self._primer.start()

    def _prime(self, snapshot: list[In]) -> None:
        lower_priority()
        try:
            step = self._start()
            for x in snapshot:
                if self._cancel.is_set():
                    return
                self._took_one()
                step(x)
            position = len(snapshot)
            while not self._cancel.is_set():
                with self._lock:
                    if not self._pending:
                        self._successor = (step, position)
                        self._progress.notify_all()
                        return
                    x = self._pending.popleft()
                self._took_one()
                step(x)
                position += 1
        except BaseException as e:  # the caller replaces the stream itself
            with self._lock:
                self._primer_error = e
                self._pending.clear()
                self._progress.notify_all()

    def _took_one(self) -> None:
        with self._lock:
            self._steps += 1
            self._progress.notify_all()  # a caller may be waiting for it to gain on the old stream

    def _wait_for_successor(self, timeout: float | None = None, steps: int | None = None) -> None:
        """Until the successor is ready (or failed); with `steps`, only until it has taken that many inputs since
        the caller's last frame (the one in its hands counts: "none pending" is not "caught up")."""
        start = time.perf_counter()
        assert self._primer is not None

        def ready() -> bool:
            return self._successor is not None or self._primer_error is not None

        def gained() -> bool:
            return steps is not None and self._steps - self._steps_before >= steps

        with self._lock:
            self._progress.wait_for(lambda: ready() or gained(), timeout)
            done = ready()
        if not done:
            self.waited_s += time.perf_counter() - start
            return
        self._primer.join()
        waited = time.perf_counter() - start
        self.waited_s += waited
        log.info("Mimi %s: waited %.2f s for its successor at frame %d", self.name, waited, self._position)
        if self._primer_error is not None:
            error, self._primer = self._primer_error, None
            self._release_slot()
            raise RuntimeError(f"could not renew Mimi's {self.name}: {error}") from error

    def _take_over(self, successor: tuple[Step, int], x: In) -> Out:
        step, position = successor
        new = step(x)
        out = new
        if self._blend is not None:
            try:
                out = self._blend(self._step(x), new)
            except Exception:  # the old stream is past its best: the successor alone
                out = new
        self._step, self._position, self._served, self._primer = step, position + 1, 1, None
        self.renewals += 1
        if self._released is not None:
            self._released()
        self._release_slot()
        log.debug("Mimi %s renewed (%d so far)", self.name, self.renewals)
        return out

    def _recover(self, x: In, error: Exception) -> Out:
        """Replace a stream that failed: a fresh one primed on the history, then the frame again."""
        self.close()  # a renewal in progress is abandoned
        with self._lock:
            self._successor = None
            self._pending.clear()
        step = self._start()
        for h in self._history:
            step(h)
        out = step(x)
        self._step, self._position, self._served = step, len(self._history) + 1, 1
        self.renewals += 1
        message = f"Mimi's {self.name} failed ({first_line(error)}); renewed it and carried on"
        log.warning(message)
        if self._notify is not None:
            self._notify(message)
        return out

    def close(self) -> None:
        """Stop a renewal in progress at its next frame and wait for its thread (it holds the codec's weights)."""
        if self._primer is not None:
            self._cancel.set()
            self._primer.join()
            self._primer = None
            self._cancel.clear()
        self._release_slot()
