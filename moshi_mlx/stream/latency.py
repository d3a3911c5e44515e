"""Mouth-to-ear latency: from a sound entering the microphone to Moshi's voice that could answer it leaving the speaker.

For Moshi's output frame k (decoded from the audio completed at step k+1, the earliest frame that the user's frame k
can influence), the latency is the DAC time of that frame's first sample at the speaker minus the ADC time of the
user's frame k's first sample at the microphone. Both come from PortAudio's stream time information, taken to
`time.monotonic()` in the callbacks (`to_monotonic`), with each sample's place in the resampling and the queues
accounted for. Its floor is the model's 160 ms (the frame itself and the acoustic delay: `frames`); the rest is:

- capture: the microphone's buffering, to the input callback holding the block that completes frame k+1;
- to_encoder: waiting for the encoder (the lag policy's queue, resampling, echo cancellation);
- encode: Mimi's encoder;
- lm: waiting for the LM and its step;
- decode: waiting for the decoder and Mimi's decoding;
- speaker_queue: Moshi's frame waiting in the speaker's queue until its first sample is handed to PortAudio;
- device_output: the speaker's buffering, from the output callback to the DAC.

The parts add up to the total. Memory is bounded: the whole conversation is kept as 1 ms histograms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..codec import FRAME_S

PARTS = ("frames", "capture", "to_encoder", "encode", "lm", "decode", "speaker_queue", "device_output")
LABELS = {"frames": "frames", "capture": "capture", "to_encoder": "encoder wait", "encode": "encode", "lm": "LM",
          "decode": "decode", "speaker_queue": "speaker queue", "device_output": "device output"}
RECENT_S = 3.0  # the status line's median is over this many seconds
HISTOGRAM_MS = 20_000  # 1 ms bins; a larger value is counted in the last one


def to_monotonic(stream_time: float, current_time: float, now: float, fallback: float) -> float:
    """A PortAudio stream time (`inputBufferAdcTime`, `outputBufferDacTime`) in the `time.monotonic()` clock.

    `current_time` is the callback's `currentTime`, `now` the monotonic time taken in the callback. Host APIs that
    give no times (zeros) get `fallback`.
    """
    if not stream_time or not current_time:
        return fallback
    return now + (stream_time - current_time)


@dataclass
class FrameTimes:
    """Monotonic times of one user frame on its way through the loop (None where the source has no devices)."""

    captured: float | None = None  # ADC time of its first sample (minus processing delay before Mimi, if any)
    arrived: float | None = None  # the input callback that delivered its last sample
    encode_start: float = 0.0
    encoded: float = 0.0
    lm_done: float = 0.0
    decoded: float = 0.0


@dataclass
class LatencySample:
    """One output frame's latency, its parts in ms (keys of `PARTS`), and when its first sample was played."""

    at: float
    parts: dict[str, float]

    @property
    def total_ms(self) -> float:
        return sum(self.parts.values())


def measure(origin: FrameTimes, step: FrameTimes, callback: float, dac: float, offset_s: float) -> LatencySample:
    """The latency of the output frame made at the step whose input is `step`, for the user frame `origin`.

    `callback`: the output callback (monotonic) that handed out the block holding the frame's first sample, `dac`
    that block's DAC time, `offset_s` where in the block the frame starts.
    """
    assert origin.captured is not None and step.captured is not None and step.arrived is not None
    completed = step.captured + FRAME_S  # the last sample of the step's user frame was captured
    parts = {
        "frames": (completed - origin.captured),
        "capture": step.arrived - completed,
        "to_encoder": step.encode_start - step.arrived,
        "encode": step.encoded - step.encode_start,
        "lm": step.lm_done - step.encoded,
        "decode": step.decoded - step.lm_done,
        "speaker_queue": callback + offset_s - step.decoded,
        "device_output": dac - callback,
    }
    return LatencySample(dac + offset_s, {name: 1000 * value for name, value in parts.items()})


def loop_sample(step: FrameTimes) -> LatencySample:
    """What file mode can measure of a frame's latency: its compute and queues, from the encoder taking the step's
    user frame to Moshi's voice decoded (a live conversation adds `frames`, capture and the speaker's parts)."""
    parts = {"encode": step.encoded - step.encode_start, "lm": step.lm_done - step.encoded,
             "decode": step.decoded - step.lm_done}
    return LatencySample(step.decoded, {name: 1000 * value for name, value in parts.items()})


@dataclass
class LatencySummary:
    """Over a conversation: the total's median, 90th percentile and maximum, and each part's median (ms)."""

    count: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    max_ms: float | None = None
    parts_ms: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """E.g. `median 212 ms, p90 230 ms, max 410 ms over 740 frames (medians: frames 160, capture 2, ...)`."""
        if not self.count:
            return "not measured (Moshi's voice never reached the speaker)"
        parts = ", ".join(f"{LABELS[name]} {ms:.0f}" for name, ms in self.parts_ms.items())
        return (f"median {self.median_ms:.0f} ms, p90 {self.p90_ms:.0f} ms, max {self.max_ms:.0f} ms over "
                f"{self.count} frames (medians: {parts})")


class _Histogram:
    def __init__(self) -> None:
        self.counts = np.zeros(HISTOGRAM_MS + 1, np.int64)

    def add(self, ms: float) -> None:
        self.counts[min(max(int(round(ms)), 0), HISTOGRAM_MS)] += 1

    def quantile(self, q: float) -> float:
        cumulative = np.cumsum(self.counts)
        return float(np.searchsorted(cumulative, q * cumulative[-1]))


class LatencyMeter:
    """Collects `LatencySample`s: the recent median for a status line, and a bounded summary of the whole run."""

    def __init__(self, recent_s: float = RECENT_S, on_sample: Callable[[LatencySample], None] | None = None):
        self.recent_s = recent_s
        self.on_sample = on_sample  # e.g. a soak's log of every frame
        self._recent: deque[tuple[float, float]] = deque()  # (at, total ms)
        self._totals = _Histogram()
        self._parts = {name: _Histogram() for name in PARTS}
        self.count = 0
        self.max_ms = 0.0

    def add(self, sample: LatencySample) -> None:
        total = sample.total_ms
        self._recent.append((sample.at, total))
        while self._recent and self._recent[0][0] < sample.at - self.recent_s:
            self._recent.popleft()
        self._totals.add(total)
        for name, ms in sample.parts.items():
            self._parts[name].add(ms)
        self.count += 1
        self.max_ms = max(self.max_ms, total)
        if self.on_sample is not None:
            self.on_sample(sample)

    def recent_ms(self) -> float | None:
        """The median over the last `recent_s` seconds of samples (None before the first)."""
        return float(np.median([total for _, total in self._recent])) if self._recent else None

    def summary(self) -> LatencySummary:
        if not self.count:
            return LatencySummary()
        return LatencySummary(
            self.count, self._totals.quantile(0.5), self._totals.quantile(0.9), self.max_ms,
            {name: hist.quantile(0.5) for name, hist in self._parts.items() if hist.counts.any()},
        )
