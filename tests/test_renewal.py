"""Codec renewal: a stream with a position limit replaced by a primed successor before it reaches it."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

from moshi_mlx.codec import renewal
from moshi_mlx.codec.renewal import RenewingStream


class WindowedStream:
    """A stand-in for one direction of Mimi: its output depends on its last `window` inputs (like an attention
    window), and it refuses to take more than `limit` frames (like rustymimi's rotary table)."""

    made: list[WindowedStream] = []

    def __init__(self, window: int, limit: int, delay_s: float = 0.0, fail_at: int | None = None):
        self.window, self.limit, self.delay_s, self.fail_at = window, limit, delay_s, fail_at
        self.seen: list[int] = []
        self.thread_names: set[str] = set()
        self.nice: set[int] = set()  # the nice values of the threads that ran it (Linux)
        WindowedStream.made.append(self)

    def __call__(self, x: int) -> int:
        self.thread_names.add(threading.current_thread().name)
        if sys.platform.startswith("linux"):
            self.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if len(self.seen) >= self.limit:
            raise ValueError("narrow invalid args start + len > dim_len: [8, 32]\n   0: candle_core::error")
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            self.fail_at = None
            raise RuntimeError("the stream broke")
        time.sleep(self.delay_s)
        self.seen.append(x)
        recent = self.seen[-self.window :]
        return sum((i + 1) * v for i, v in enumerate(recent))


def reference(inputs: list[int], window: int) -> list[int]:
    stream = WindowedStream(window, limit=len(inputs))
    return [stream(x) for x in inputs]


def streams_made(window: int, limit: int, successor_delay_s: float, first_delay_s: float = 0.0):
    """A `start` for `RenewingStream` whose first stream takes `first_delay_s` a frame and its successors
    `successor_delay_s`, and the list of the streams it made."""
    made: list[WindowedStream] = []

    def start() -> WindowedStream:
        made.append(WindowedStream(window=window, limit=limit,
                                   delay_s=successor_delay_s if made else first_delay_s))
        return made[-1]

    return made, start


@pytest.fixture(autouse=True)
def forget_streams():
    WindowedStream.made.clear()
    yield


def test_outputs_carry_on_across_renewals_and_past_the_limit():
    inputs = list(range(1, 1001))
    renewing = RenewingStream("encoder", lambda: WindowedStream(window=8, limit=100), limit=100, renew_every=30,
                              prime_frames=10)
    outputs = [renewing(x) for x in inputs]
    renewing.close()
    assert outputs == reference(inputs, window=8)  # the window fits in the priming: exact
    # A stream takes at most 100 frames, priming included; one may still be priming at the end.
    assert renewing.renewals >= 1000 // 100 and len(WindowedStream.made) - 2 in (renewing.renewals,
                                                                                  renewing.renewals + 1)
    assert all(len(stream.seen) <= 100 for stream in WindowedStream.made[:-1])  # the last: the reference
    # Successors were primed on their own thread, never on the caller's.
    primed = [s for s in WindowedStream.made[1:-1] if s.thread_names]
    assert primed and all("mimi-encoder-renewal" in s.thread_names for s in primed), [s.thread_names for s in primed]


def test_a_slow_successor_is_waited_for_at_the_limit():
    made = []

    def start():
        made.append(1)
        return WindowedStream(window=4, limit=40, delay_s=0.002 if len(made) > 1 else 0.0)

    renewing = RenewingStream("decoder", start, limit=40, renew_every=20, prime_frames=15)
    inputs = list(range(200))
    outputs = [renewing(x) for x in inputs]
    renewing.close()
    assert outputs == reference(inputs, window=4)
    assert renewing.renewals >= 3


def test_a_failed_stream_is_renewed_on_the_spot_and_the_frame_retried():
    notices = []
    first = [True]

    def start():
        fail_at = 50 if first[0] else None
        first[0] = False
        return WindowedStream(window=5, limit=10_000, fail_at=fail_at)

    renewing = RenewingStream("encoder", start, limit=10_000, renew_every=5000, prime_frames=20,
                              notify=notices.append)
    inputs = list(range(120))
    outputs = [renewing(x) for x in inputs]
    assert outputs == reference(inputs, window=5)
    assert renewing.renewals == 1
    assert notices == ["Mimi's encoder failed (the stream broke); renewed it and carried on"]


def test_blend_joins_the_old_and_new_outputs_at_the_takeover():
    blended = []

    def blend(old, new):
        blended.append((old, new))
        return new

    renewing = RenewingStream("decoder", lambda: WindowedStream(window=3, limit=60), limit=60, renew_every=20,
                              prime_frames=5, blend=blend)
    for x in range(100):
        renewing(x)
    renewing.close()
    assert len(blended) == renewing.renewals >= 2
    assert all(old == new for old, new in blended)  # both streams agree where the window fits the priming


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="prime_frames"):
        RenewingStream("encoder", lambda: WindowedStream(3, 10), limit=100, renew_every=10, prime_frames=0)
    with pytest.raises(ValueError, match="limit"):
        RenewingStream("encoder", lambda: WindowedStream(3, 10), limit=100, renew_every=80, prime_frames=30)


def test_crossfade_goes_from_old_to_new():
    from moshi_mlx.codec.rustymimi_backend import crossfade

    old, new = np.ones(1920, np.float32), np.zeros(1920, np.float32)
    out = crossfade(old, new)
    assert out[0] == 1.0 and out[-1] == 0.0 and np.all(np.diff(out) <= 0) and out.dtype == np.float32


def test_first_after_staggers_two_streams():
    def stream(first_after=None):
        return RenewingStream("decoder", lambda: WindowedStream(window=3, limit=100), limit=100, renew_every=40,
                              prime_frames=5, first_after=first_after)

    encoder, decoder = stream(), stream(first_after=20)
    started = {"encoder": [], "decoder": []}
    for t in range(60):
        for name, s in (("encoder", encoder), ("decoder", decoder)):
            before = s._primer is not None
            s(t)
            if s._primer is not None and not before:
                started[name].append(t)
    encoder.close()
    decoder.close()
    assert started["decoder"][0] == 20 and started["encoder"][0] == 40


def test_close_stops_a_renewal_in_progress_at_once():
    slow = [0]

    def start():
        slow[0] += 1
        return WindowedStream(window=3, limit=1000, delay_s=0.05 if slow[0] > 1 else 0.0)

    renewing = RenewingStream("decoder", start, limit=1000, renew_every=240, prime_frames=200)
    for x in range(250):  # the successor starts priming 200 frames at 50 ms each: 10 s
        renewing(x)
    began = time.monotonic()
    renewing.close()
    assert time.monotonic() - began < 2.0


def test_streams_sharing_a_slot_prime_one_successor_at_a_time():
    slot = threading.Semaphore(1)

    def stream(name):
        made = []

        def start():
            made.append(1)  # successors are slow: each renewal spans several of the caller's frames
            return WindowedStream(window=3, limit=200, delay_s=0.001 if len(made) > 1 else 0.0)

        # Both due at the same frames: without the slot their successors would prime together.
        return RenewingStream(name, start, limit=200, renew_every=40, prime_frames=10, slot=slot)

    encoder, decoder = stream("encoder"), stream("decoder")
    inputs = list(range(1, 601))
    outputs = {"encoder": [], "decoder": []}
    together = 0
    for x in inputs:
        for name, s in (("encoder", encoder), ("decoder", decoder)):
            outputs[name].append(s(x))
        together += encoder._primer is not None and decoder._primer is not None
    encoder.close()
    decoder.close()
    assert together == 0
    assert outputs["encoder"] == outputs["decoder"] == reference(inputs, window=3)
    assert encoder.renewals >= 3 and decoder.renewals >= 3
    assert all(len(s.seen) <= 200 for s in WindowedStream.made[:-1])
    assert slot.acquire(blocking=False)  # handed back


def test_a_stream_renews_without_the_slot_before_its_limit():
    slot = threading.Semaphore(1)
    slot.acquire()  # another stream's successor, stuck
    notes = []
    renewing = RenewingStream("decoder", lambda: WindowedStream(window=4, limit=100), limit=100, renew_every=30,
                              prime_frames=10, slot=slot, notify=notes.append)
    inputs = list(range(1, 401))
    outputs = [renewing(x) for x in inputs]
    renewing.close()
    assert outputs == reference(inputs, window=4)
    assert notes == []  # renewed in time, not replaced after hitting the limit
    assert renewing.renewals >= 4
    assert all(len(s.seen) <= 100 for s in WindowedStream.made[:-1])
    assert not slot.acquire(blocking=False)  # it never took (or gave back) a slot it did not hold


def test_a_successor_slower_than_the_old_stream_still_catches_up_before_the_limit():
    """A successor sharing the cores runs slower than the stream it follows: once its own time is over, the caller
    waits for it at every frame until it has caught up (else it would stay behind until the old stream's limit)."""
    made, start = streams_made(3, 400, 0.002, 0.0005)

    renewing = RenewingStream("encoder", start, limit=400, renew_every=100, prime_frames=20)
    inputs = list(range(1, 901))
    outputs = [renewing(x) for x in inputs]
    renewing.close()
    assert outputs == reference(inputs, window=3)
    assert renewing.renewals >= 3
    # Every replaced stream handed over well before its limit, where the caller would have had to wait in full.
    replaced = made[: renewing.renewals]
    assert all(len(s.seen) < 300 for s in replaced), [len(s.seen) for s in replaced]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_a_successor_primes_at_the_lowest_priority():
    renewing = RenewingStream("encoder", lambda: WindowedStream(window=3, limit=100), limit=100, renew_every=30,
                              prime_frames=10)
    for x in range(80):
        renewing(x)
    renewing.close()
    first, successors = WindowedStream.made[0], WindowedStream.made[1:]
    assert first.nice == {os.getpriority(os.PRIO_PROCESS, 0)}  # the caller's own thread is left alone
    primed = [s.nice for s in successors if "mimi-encoder-renewal" in s.thread_names]
    assert primed and all(19 in nice for nice in primed), primed


def test_on_a_mac_the_primer_asks_for_the_threads_background_band(monkeypatch):
    calls = []
    monkeypatch.setattr(renewal.sys, "platform", "darwin")
    monkeypatch.setattr(renewal.os, "setpriority", lambda *args: calls.append(args), raising=False)
    renewal.lower_priority()
    assert calls == [(3, 0, 0x1000)]  # PRIO_DARWIN_THREAD, the calling thread, PRIO_DARWIN_BG


def test_the_caller_does_not_wait_for_a_successor_in_its_own_time():
    """Half a period from its start, a successor that is far behind does not hold the caller up: live, that wait
    is a skipped frame. Only then does the caller make it gain on the old stream."""
    made, start = streams_made(3, 1000, 0.005)

    renewing = RenewingStream("encoder", start, limit=1000, renew_every=200, prime_frames=20)
    inputs = list(range(1, 701))
    outputs = [renewing(x) for x in inputs[:300]]  # the renewal starts at frame 200: 100 frames of its own
    assert renewing.renewing and renewing.waited_s == 0.0 and len(made[1].seen) < 50
    outputs += [renewing(x) for x in inputs[300:]]
    renewing.close()
    assert outputs == reference(inputs, window=3)
    assert renewing.renewals >= 1 and renewing.waited_s > 0  # then it waited, and the successor took over


def test_a_successor_with_cores_to_spare_never_makes_a_paced_caller_wait():
    """Live: frames come in real time and the successor, faster than that, is ready by itself."""
    made, start = streams_made(3, 400, 0.0005)

    renewing = RenewingStream("decoder", start, limit=400, renew_every=100, prime_frames=20)
    inputs = list(range(1, 501))
    outputs = []
    for x in inputs:
        outputs.append(renewing(x))
        time.sleep(0.004)  # the next frame is not there yet
    renewing.close()
    assert outputs == reference(inputs, window=3)
    assert renewing.renewals >= 4 and renewing.waited_s == 0.0
