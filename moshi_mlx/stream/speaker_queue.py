"""Moshi's voice on its way to the speaker: device blocks queued by the decoder, taken by the output callback.

The queue holds what smooth playback needs and no more: when it has never run below `spare` blocks over the last
`TRIM_WINDOW_S` (a backlog left by a hiccup), the surplus is dropped (counted), so a late backlog does not stay for
the rest of the conversation. `spare` covers the decoder's jitter: a frame's lateness against the one before it
(its arrival interval beyond the frame's duration), at the `JITTER_QUANTILE` of the last `JITTER_HISTORY_S`, in
blocks rounded to the nearest (the output callback's phase against the arrivals absorbs half a block) and held
still within a dead band, up to `MAX_SPARE`. It is measured on arrivals, not on underruns, so it does not wander as
the queue's level does; an interval longer than a stall's bound is a stall, not jitter, and is left out. Each frame's
first sample is followed through the resampling, so that the callback can say when it was handed out (`played`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ..codec import SAMPLE_RATE
from .audio_io import Chunker, StreamResampler

TRIM_WINDOW_S = 0.5  # the queue's surplus is judged over this long
JITTER_HISTORY_S = 30.0  # the decoder's jitter is judged over this long
JITTER_QUANTILE = 0.98  # the spare covers all but this rare a lateness
STALL_S = 0.08  # an arrival later than this against the frame before is a stall, not jitter
MAX_SPARE = 4  # blocks kept for jitter at most
SPARE_DEAD_BAND = 0.75  # blocks: the spare changes when the jitter moves this far from it

Played = tuple[object, float, float, float]  # a frame's tag, its output callback, that block's DAC time, its offset (s)


class SpeakerQueue:
    """Device blocks of `blocksize` samples at `rate`; `stats` gets `output_dropped` and `output_trimmed` counts.

    `put` runs on the decoder's thread, `take` in the output callback (a lock of a few list operations between).
    """

    def __init__(self, rate: int, blocksize: int, stats: Any):
        self.rate, self.stats = rate, stats
        self.blocks: deque[tuple[np.ndarray, int]] = deque()  # each with the index of its first sample
        self.played: deque[Played] = deque()  # tagged frames whose first sample was handed out
        self.spare = 0  # blocks kept for a decoder that comes late
        self.speaking = False  # Moshi's first block has been queued
        self.trim_window = max(1, round(TRIM_WINDOW_S * rate / blocksize))  # in callbacks
        self._block_s = blocksize / rate
        self._resample = StreamResampler(SAMPLE_RATE, rate)
        self._chunk = Chunker(blocksize)
        self._lock = threading.Lock()
        self._queued = 0  # samples given to the resampler so far, at 24 kHz
        self._blocked = 0  # samples queued as blocks so far (the next block's first index)
        self._starts: deque[tuple[int, object]] = deque()  # (index, tag) of frames not yet handed out
        self._lowest = 0  # fewest blocks left over this trim window
        self._window = 0  # callbacks into it
        self._arrival: float | None = None  # when the last put came (monotonic)
        self._duration = 0.0  # how long its samples last (s)
        self._lateness: deque[float] = deque()  # each arrival's interval beyond the one before's duration (s)

    def __len__(self) -> int:
        return len(self.blocks)

    def put(
        self, moshi: np.ndarray, tag: object = None, max_blocks: int | None = None, now: float | None = None
    ) -> None:
        """Moshi's 24 kHz samples, resampled and queued as blocks; beyond `max_blocks` the oldest are dropped.

        `tag` (e.g. the frame's times) comes back in `played` once the samples' first one is handed out; `now`
        (monotonic, default the clock's) is when they came, for the jitter that sizes `spare`.
        """
        self._note_arrival(time.monotonic() if now is None else now, len(moshi) / SAMPLE_RATE)
        with self._lock:
            if tag is not None:  # the resampler keeps positions: 24 kHz sample n is the device's n * rate / 24000
                self._starts.append((round(self._queued * self.rate / SAMPLE_RATE), tag))
            self._queued += len(moshi)
            for block in self._chunk(self._resample(moshi)):
                self.blocks.append((block, self._blocked))
                self._blocked += len(block)
                self.speaking = True
            while max_blocks is not None and len(self.blocks) > max_blocks:
                self._drop()

    def _note_arrival(self, now: float, duration: float) -> None:
        """The decoder thread's side: this arrival's lateness against the one before, and `spare` from it."""
        if self._arrival is not None:
            late = now - self._arrival - self._duration
            if late <= STALL_S:
                self._lateness.append(max(late, 0.0))
                if len(self._lateness) > JITTER_HISTORY_S / self._duration:
                    self._lateness.popleft()
                jitter = float(np.quantile(np.fromiter(self._lateness, float), JITTER_QUANTILE))
                blocks = jitter / self._block_s
                if abs(blocks - self.spare) > SPARE_DEAD_BAND:  # a jitter near a block's edge keeps it still
                    self.spare = min(math.floor(blocks + 0.5), MAX_SPARE)
        self._arrival, self._duration = now, duration

    def take(self, callback: float, dac: float) -> np.ndarray | None:
        """The next block for the output callback (None: nothing to play), at `callback` (monotonic) for `dac`."""
        with self._lock:
            block = self._take(callback, dac) if self.blocks else None
            self._trim(ran_dry=block is None)
        return block

    def _take(self, callback: float | None, dac: float = 0.0) -> np.ndarray:
        block, first = self.blocks.popleft()
        end = first + len(block)
        while self._starts and self._starts[0][0] < end:
            index, tag = self._starts.popleft()
            if callback is not None:
                self.played.append((tag, callback, dac, (index - first) / self.rate))
        return block

    def _drop(self) -> None:
        self._take(None)
        self.stats.output_dropped += 1

    def _trim(self, ran_dry: bool) -> None:
        """Drop the surplus once the queue stayed above `spare` blocks for a whole window (one that starts after
        it last ran dry: a stall's burst is judged from its first block on)."""
        if ran_dry:
            self._window, self._lowest = 0, 0
            return
        self._lowest = min(self._lowest, len(self.blocks)) if self._window else len(self.blocks)
        self._window += 1
        if self._window < self.trim_window:
            return
        for _ in range(self._lowest - self.spare):
            self._drop()
            self.stats.output_trimmed += 1
        self._window, self._lowest = 0, len(self.blocks)
