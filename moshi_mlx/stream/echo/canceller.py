"""Echo cancellation: Moshi's own voice taken out of the microphone before Mimi hears it (WebRTC AEC3).

The reference is exactly what was written to the speaker (silence included), queued by the output callback with
`add_reference`; `clean` takes one microphone frame and pairs it with the reference that arrived before it. AEC3
finds the echo's delay itself as long as the reference leads its echo by less than about 500 ms; a longer lead
(large output buffers, Bluetooth) is measured by cross-correlation and the reference held back to bring it in range.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...codec import FRAME_SIZE, SAMPLE_RATE
from ...errors import first_line
from ..audio_io import Chunker, StreamResampler, downmix
from .aec3 import Aec3
from .lead import LeadEstimator, dbfs

BYPASS_DELAY_MS = 9.3  # AEC3's own delay at 24 kHz (measured); the untouched microphone is delayed alike


@dataclass(frozen=True)
class EchoSettings:
    """The canceller's rates, AEC3's options and the lead estimator's thresholds."""

    sample_rate: int = SAMPLE_RATE
    reference_rate: int | None = None  # the speaker's rate when not `sample_rate` (resampled on the cleaning thread)
    high_pass: bool = True  # noise suppression and gain control stay off: Mimi was trained on natural audio
    max_lead_ms: float = 450.0  # a longer lead is held back (AEC3 searches about 500 ms)
    target_lead_ms: float = 120.0  # the lead left by a hold-back
    min_lead_ms: float = 20.0  # a held-back reference closer than this to its echo is released again
    search_ms: float = 1600.0  # longest lead the cross-correlation looks for
    window_ms: float = 1000.0  # microphone span correlated with the reference
    estimate_every_ms: float = 500.0
    active_dbfs: float = -50.0  # the reference counts as Moshi speaking above this level


class EchoCanceller:
    """WebRTC's AEC3 (`aec3.Aec3`) at 24 kHz, fed 10 ms sub-frames: mono float32 in, mono float32 out.

    Composes AEC3, the reference queue, the hold-back decided by `lead.LeadEstimator`, the headphone bypass (the
    microphone untouched once no echo path is heard) and the echo reduction figure. `add_reference` is safe to call
    from an audio callback (it only appends to a deque); `clean` runs on one other thread (a worker or the inference
    thread). Not for two conversations at once: `reset()` between them.
    """

    def __init__(self, settings: EchoSettings | None = None, apm: Any = None):
        self.settings = s = settings or EchoSettings()
        self._aec3 = Aec3(s.sample_rate, s.high_pass, apm)
        self.subframe = self._aec3.subframe
        # Bounded so that a canceller nobody cleans with cannot grow without end (10 s of 80 ms blocks).
        self._queue: deque[tuple[float, np.ndarray, float | None]] = deque(maxlen=125)
        self._lock = threading.Lock()  # clean() against reset()
        self._reset_state()

    def _reset_state(self) -> None:
        s = self.settings
        self._resample = StreamResampler(s.reference_rate or s.sample_rate, s.sample_rate)
        self._pending = np.zeros(0, np.float32)  # reference taken from the queue, not yet given to AEC3
        self.hold = 0  # samples of reference held back (the tail of _pending)
        self.lead = LeadEstimator(s)
        self._released_energy: deque[float] = deque(maxlen=8)  # per frame, to tell when Moshi speaks
        self._frames: deque[tuple[float, float, bool]] = deque(maxlen=50)  # (mic, out energy, echo expected)
        self._raw_tail = np.zeros(int(round(BYPASS_DELAY_MS * (s.sample_rate // 1000))), np.float32)
        self._passing = False  # the last frame went out untouched

    def reset(self) -> None:
        """A new conversation: fresh AEC3 state, empty queues, no hold-back."""
        with self._lock:
            self._aec3.reset()
            self._queue.clear()
            self._reset_state()

    @property
    def delay_s(self) -> float:
        """How late the cleaned microphone is against the raw one (AEC3's own delay; the bypass matches it)."""
        return BYPASS_DELAY_MS / 1000

    def add_reference(self, block: np.ndarray, dac_time: float | None = None) -> None:
        """The samples just written to the speaker (`[frames]` or `[frames, channels]`; zeros when it played
        silence), at `settings.reference_rate` when given, else 24 kHz.

        `dac_time`: when the block's first sample reaches the speaker, in the stream clock (`outputBufferDacTime`).
        Cheap and non-blocking: a copy and an append.
        """
        self._queue.append((time.monotonic(), np.array(block, np.float32, copy=True), dac_time))

    def clean(self, mic: np.ndarray, arrived: float | None = None, adc_time: float | None = None) -> np.ndarray:
        """One microphone frame (a whole number of 10 ms, float32) -> the same frame with the echo removed.

        The reference added before `arrived` (`time.monotonic()` in the input callback; default now) is given to
        AEC3 first. `adc_time`: when the frame's first sample was captured (`inputBufferAdcTime`).
        """
        mic = np.asarray(mic, np.float32).reshape(-1)
        sub = self.subframe
        if len(mic) % sub:
            raise ValueError(f"a microphone frame must be a whole number of {sub} samples, got {len(mic)}")
        with self._lock:
            self._take_reference(time.monotonic() if arrived is None else arrived)
            released = (len(self._pending) - self.hold) // sub
            ref = self._pending[: released * sub]
            self._pending = self._pending[released * sub :]
            out = self._choose(mic, self._aec3.process(mic, ref))
            self._set_hold(self.lead.observe(mic, len(self._pending), self.hold, adc_time))
            self._measure(mic, out, ref)
        return out

    def _take_reference(self, arrived: float) -> None:
        blocks = []
        while self._queue and self._queue[0][0] <= arrived:
            _, block, dac = self._queue.popleft()
            block = self._resample(downmix(block))
            self.lead.add_reference(block, dac)
            blocks.append(block)
        if blocks:
            self._pending = np.concatenate([self._pending, *blocks])

    def _set_hold(self, new: int) -> None:
        """Delay the reference by `new` samples; the count given to AEC3 per frame stays steady (zeros in, or
        the oldest samples skipped)."""
        if new > self.hold:
            self._pending = np.concatenate([np.zeros(new - self.hold, np.float32), self._pending])
        elif new < self.hold:
            self._pending = self._pending[self.hold - new :]
        self.hold = new

    def _choose(self, mic: np.ndarray, cleaned: np.ndarray) -> np.ndarray:
        """AEC3's output, or the microphone untouched (as late as AEC3's) once no echo path is heard; a switch
        cross-fades over the frame."""
        raw = np.concatenate([self._raw_tail, mic])
        delayed, self._raw_tail = raw[: len(mic)], raw[len(mic) :]
        passing = self.lead.echo_path is False
        if passing == self._passing:
            return delayed if passing else cleaned
        self._passing = passing
        fade = np.linspace(0.0, 1.0, len(mic), dtype=np.float32)
        new, old = (delayed, cleaned) if passing else (cleaned, delayed)
        return fade * new + (1 - fade) * old

    def _measure(self, mic: np.ndarray, out: np.ndarray, ref: np.ndarray) -> None:
        self._released_energy.append(float(np.mean(np.square(ref))) if len(ref) else 0.0)
        # Echo expected: the reference was active in the last ~600 ms (the echo follows it by up to the lead).
        expected = dbfs(max(self._released_energy)) > self.settings.active_dbfs
        self._frames.append((float(np.mean(np.square(mic))), float(np.mean(np.square(out))), expected))

    @property
    def echo_path(self) -> bool | None:
        """Does the microphone hear Moshi? None until known."""
        return self.lead.echo_path

    @property
    def lead_ms(self) -> float | None:
        """Best estimate of the lead AEC3 sees (after the hold-back)."""
        return self.lead.lead_ms

    @property
    def xcorr_lead_ms(self) -> float | None:
        """Last confident cross-correlation estimate of the lead (before the hold-back)."""
        return self.lead.xcorr_lead_ms

    @property
    def hold_ms(self) -> float:
        """How long the reference is held back."""
        return self.hold * 1000 / self.settings.sample_rate

    def echo_reduction_db(self, frames: int = 13) -> float | None:
        """Microphone over cleaned energy, in dB, over the last `frames` frames in which Moshi's voice could echo;
        None while Moshi has been silent (or fewer than 4 such frames) or when no echo path is heard."""
        if self.echo_path is False:
            return None
        recent = [f for f in list(self._frames)[-frames:] if f[2]]
        if len(recent) < 4:
            return None
        mic = sum(f[0] for f in recent)
        out = sum(f[1] for f in recent)
        if mic <= 1e-10:  # the microphone hears nothing: no echo to measure
            return None
        return 10 * math.log10(mic / max(out, 1e-12))


class CleanedMicrophone:
    """The microphone's device blocks (any rate, any channels) -> cleaned 24 kHz frames, for the live loop.

    Give it every captured block in arrival order, those the lag policy will drop included (a gap in the
    microphone stream that the reference does not have makes AEC3 realign); drop frames after it.
    `captured` then holds, for each frame of the last call, when its first sample was captured (see `__call__`).
    """

    def __init__(self, canceller: EchoCanceller | None, device_rate: int, frame_size: int = FRAME_SIZE):
        self.canceller = canceller
        self.device_rate = device_rate
        self.rate = canceller.settings.sample_rate if canceller is not None else SAMPLE_RATE
        self.frame_size = frame_size
        self._resample = StreamResampler(device_rate, self.rate)
        self._frames = Chunker(frame_size)
        self._frame_s = frame_size / self.rate
        self._taken = 0  # device samples given so far
        self._framed = 0  # frames handed out so far
        self.captured: list[float | None] = []

    def __call__(self, block: np.ndarray, arrived: float | None = None,
                 adc_time: float | None = None) -> list[np.ndarray]:
        """One input callback's block, its `time.monotonic()` there and the ADC time of its first sample.

        Sets `captured`: each frame's first sample's ADC time (the resampler keeps positions: its output sample n
        is the input's at n * device_rate / rate), less the canceller's own delay: when its audio was heard.
        """
        first = self._taken
        self._taken += len(block)
        frames = self._frames(self._resample(downmix(block)))
        delay = self.canceller.delay_s if self.canceller is not None else 0.0
        self.captured = []
        for _ in frames:
            start = self._framed * self.frame_size * self.device_rate / self.rate  # in device samples
            self.captured.append(None if adc_time is None else adc_time + (start - first) / self.device_rate - delay)
            self._framed += 1
        if self.canceller is None:
            return frames
        # A frame completed by this block ends with it: its first sample was captured a frame before the block's end.
        end = None if adc_time is None else adc_time + len(block) / self.device_rate
        return [self.canceller.clean(frame, arrived, None if end is None else end - self._frame_s)
                for frame in frames]


def make_echo_canceller(
    enabled: bool = True,
    settings: EchoSettings | None = None,
    warn: Callable[[str], None] | None = None,
) -> EchoCanceller | None:
    """An `EchoCanceller`, or None when disabled or when livekit cannot load (then one warning line)."""
    if not enabled:
        return None
    try:
        return EchoCanceller(settings)
    except Exception as e:  # ImportError, a missing FFI library (OSError), an FFI error
        message = f"warning: echo cancellation off: cannot load livekit's WebRTC audio processing ({first_line(e)}); " \
                  "use headphones"
        (warn or (lambda line: print(line, file=sys.stderr)))(message)
        return None
