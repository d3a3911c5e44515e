"""Echo cancellation: Moshi's own voice taken out of the microphone before Mimi hears it (WebRTC AEC3).

The reference is exactly what was written to the speaker (silence included), queued by the output callback with
`add_reference`; `clean` takes one microphone frame and pairs it with the reference that arrived before it. AEC3
finds the echo's delay itself as long as the reference leads its echo by less than about 500 ms; a longer lead
(large output buffers, Bluetooth) is measured by cross-correlation and the reference held back to bring it in range.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio_io import StreamResampler, downmix

log = logging.getLogger(__name__)

SUBFRAME_MS = 10  # AEC3 takes 10 ms frames only
DECIMATE = 4  # cross-correlation runs at 6 kHz
# GCC-PHAT peak over the correlation's RMS: an echo gives 12-80 (synthetic rooms, double talk included), none 4-7.
ECHO_SHARPNESS, NO_ECHO_SHARPNESS = 10.0, 7.0
NO_ECHO_ESTIMATES = 3  # estimates in a row (0.5 s apart) without an echo before the microphone passes untouched
BYPASS_DELAY_MS = 9.3  # AEC3's own delay at 24 kHz (measured); the untouched microphone is delayed alike


@dataclass(frozen=True)
class EchoSettings:
    sample_rate: int = 24000
    reference_rate: int | None = None  # the speaker's rate when not `sample_rate` (resampled on the cleaning thread)
    high_pass: bool = True  # noise suppression and gain control stay off: Mimi was trained on natural audio
    max_lead_ms: float = 450.0  # a longer lead is held back (AEC3 searches about 500 ms)
    target_lead_ms: float = 120.0  # the lead left by a hold-back
    min_lead_ms: float = 20.0  # a held-back reference closer than this to its echo is released again
    search_ms: float = 1600.0  # longest lead the cross-correlation looks for
    window_ms: float = 1000.0  # microphone span correlated with the reference
    estimate_every_ms: float = 500.0
    active_dbfs: float = -50.0  # the reference counts as Moshi speaking above this level


def _dbfs(energy: float) -> float:
    return 10 * math.log10(energy) if energy > 0 else -math.inf


class _Ring:
    """The last `size` samples of a stream, addressed by absolute sample index."""

    def __init__(self, size: int):
        self.data = np.zeros(size, np.float32)
        self.end = 0  # absolute index of the next sample

    def append(self, x: np.ndarray) -> None:
        size = len(self.data)
        self.end += len(x)
        x = x[-size:]
        start = (self.end - len(x)) % size
        first = min(len(x), size - start)
        self.data[start : start + first] = x[:first]
        self.data[: len(x) - first] = x[first:]

    def get(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop); zeros where the ring does not hold them (not yet, or no longer)."""
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, self.end - len(self.data)), min(stop, self.end)
        size = len(self.data)
        while lo < hi:  # at most two contiguous pieces
            stop_here = min(hi, (lo // size + 1) * size)
            out[lo - start : stop_here - start] = self.data[lo % size : lo % size + stop_here - lo]
            lo = stop_here
        return out


def gcc_phat_lag(mic: np.ndarray, ref: np.ndarray) -> tuple[int, float]:
    """The shift s maximising sum(mic[n] * ref[n + s]) (0 <= s <= len(ref) - len(mic)) and its sharpness.

    PHAT weighting (phase only) gives a narrow peak for speech; sharpness = peak / RMS of the correlation.
    """
    n = 1 << (len(mic) + len(ref) - 1).bit_length()
    spec = np.conj(np.fft.rfft(mic, n)) * np.fft.rfft(ref, n)
    corr = np.fft.irfft(spec / (np.abs(spec) + 1e-9), n)[: len(ref) - len(mic) + 1]
    shift = int(np.argmax(corr))
    spread = float(np.sqrt(np.mean(np.square(corr)))) + 1e-12
    return shift, float(corr[shift]) / spread


class EchoCanceller:
    """WebRTC's AEC3 (through livekit) at 24 kHz, fed 10 ms sub-frames: mono float32 in, mono float32 out.

    `add_reference` is safe to call from an audio callback (it only appends to a deque); `clean` runs on one
    other thread (a worker or the inference thread). Not for two conversations at once: `reset()` between them.
    """

    def __init__(self, settings: EchoSettings | None = None, apm: Any = None):
        self.settings = s = settings or EchoSettings()
        self.subframe = s.sample_rate * SUBFRAME_MS // 1000
        self._apm = apm if apm is not None else _new_apm(s.high_pass)
        self._rtc = _rtc()
        # Bounded so that a canceller nobody cleans with cannot grow without end (10 s of 80 ms blocks).
        self._queue: deque[tuple[float, np.ndarray, float | None]] = deque(maxlen=125)
        self._lock = threading.Lock()  # clean() against reset()
        self._reset_state()

    def _reset_state(self) -> None:
        s = self.settings
        ms = s.sample_rate // 1000
        self._resample = StreamResampler(s.reference_rate or s.sample_rate, s.sample_rate)
        self._pending = np.zeros(0, np.float32)  # reference taken from the queue, not yet given to AEC3
        self.hold = 0  # samples of reference held back (the tail of _pending)
        self.ref_taken = 0  # reference samples taken from the queue so far
        self.mic_count = 0  # microphone samples cleaned so far
        history = int((s.search_ms + s.window_ms + 500) * ms)
        self._ref_hist, self._mic_hist = _Ring(history), _Ring(history)
        self._released_energy: deque[float] = deque(maxlen=8)  # per frame, to tell when Moshi speaks
        self._frames: deque[tuple[float, float, bool]] = deque(maxlen=50)  # (mic, out energy, echo expected)
        # Both before the hold-back ("raw"): reference taken minus microphone position (samples), and the lead
        # from the streams' time info (ms).
        self._offsets: deque[int] = deque(maxlen=25)
        self._time_leads: deque[float] = deque(maxlen=25)
        self._dac_anchor: tuple[int, float] | None = None  # (reference index, its DAC time)
        self._next_estimate = int(s.estimate_every_ms * ms)
        self.xcorr_lead_ms: float | None = None  # last confident cross-correlation estimate (raw, no hold-back)
        self.lead_ms: float | None = None  # best estimate of the lead AEC3 sees (after the hold-back)
        self._late_warned = False
        self._logged_lead = -math.inf
        self.echo_path: bool | None = None  # does the microphone hear Moshi? None until known
        self._unheard = 0
        self._raw_tail = np.zeros(int(round(BYPASS_DELAY_MS * ms)), np.float32)
        self._passing = False  # the last frame went out untouched
        self.cost_s = 0.0  # time spent in clean(), for the benchmarks
        self.frames = 0

    def reset(self) -> None:
        """A new conversation: fresh AEC3 state, empty queues, no hold-back."""
        with self._lock:
            self._apm = _new_apm(self.settings.high_pass)
            self._queue.clear()
            self._reset_state()

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
        start = time.perf_counter()
        mic = np.asarray(mic, np.float32).reshape(-1)
        sub = self.subframe
        if len(mic) % sub:
            raise ValueError(f"a microphone frame must be a whole number of {sub} samples, got {len(mic)}")
        with self._lock:
            self._take_reference(time.monotonic() if arrived is None else arrived)
            released = (len(self._pending) - self.hold) // sub
            ref = self._pending[: released * sub]
            self._pending = self._pending[released * sub :]
            out = self._choose(mic, self._process(mic, ref))
            self.mic_count += len(mic)
            self._mic_hist.append(mic)
            self._measure(mic, out, ref, adc_time)
        self.cost_s += time.perf_counter() - start
        self.frames += 1
        return out

    def _take_reference(self, arrived: float) -> None:
        blocks = []
        while self._queue and self._queue[0][0] <= arrived:
            _, block, dac = self._queue.popleft()
            if dac is not None:
                self._dac_anchor = (self.ref_taken, dac)
            block = self._resample(downmix(block))
            self.ref_taken += len(block)
            blocks.append(block)
        if blocks:
            data = np.concatenate(blocks)
            self._ref_hist.append(data)
            self._pending = np.concatenate([self._pending, data])

    def _process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Reference and microphone sub-frames interleaved, the reference spread evenly before the microphone."""
        sub, rate, rtc = self.subframe, self.settings.sample_rate, self._rtc
        mic16 = _to_int16(mic)
        ref16 = _to_int16(ref)
        n_mic, n_ref = len(mic16) // sub, len(ref16) // sub
        out = np.empty(len(mic16), np.int16)
        done = 0
        for i in range(n_mic):
            upto = -(-(i + 1) * n_ref // n_mic)
            for j in range(done, upto):
                frame = rtc.AudioFrame(bytearray(ref16[j * sub : (j + 1) * sub].tobytes()), rate, 1, sub)
                self._apm.process_reverse_stream(frame)
            done = upto
            frame = rtc.AudioFrame(bytearray(mic16[i * sub : (i + 1) * sub].tobytes()), rate, 1, sub)
            self._apm.process_stream(frame)
            out[i * sub : (i + 1) * sub] = np.frombuffer(frame.data, np.int16)
        return out.astype(np.float32) / 32768.0

    def _choose(self, mic: np.ndarray, cleaned: np.ndarray) -> np.ndarray:
        """AEC3's output, or the microphone untouched (as late as AEC3's) once no echo path is heard; a switch
        cross-fades over the frame."""
        raw = np.concatenate([self._raw_tail, mic])
        delayed, self._raw_tail = raw[: len(mic)], raw[len(mic) :]
        passing = self.echo_path is False
        if passing == self._passing:
            return delayed if passing else cleaned
        self._passing = passing
        fade = np.linspace(0.0, 1.0, len(mic), dtype=np.float32)
        new, old = (delayed, cleaned) if passing else (cleaned, delayed)
        return fade * new + (1 - fade) * old

    def _measure(self, mic: np.ndarray, out: np.ndarray, ref: np.ndarray, adc_time: float | None) -> None:
        s = self.settings
        ms = s.sample_rate / 1000
        self._released_energy.append(float(np.mean(np.square(ref))) if len(ref) else 0.0)
        # Echo expected: the reference was active in the last ~600 ms (the echo follows it by up to the lead).
        expected = _dbfs(max(self._released_energy)) > s.active_dbfs
        self._frames.append((float(np.mean(np.square(mic))), float(np.mean(np.square(out))), expected))
        released_end = self.ref_taken - len(self._pending)  # next reference index not yet given to AEC3
        self._offsets.append(released_end + self.hold - self.mic_count)
        if adc_time is not None and self._dac_anchor is not None:
            index, dac = self._dac_anchor
            last_released = dac + (released_end - 1 - index) / s.sample_rate
            last_captured = adc_time + (len(mic) - 1) / s.sample_rate
            self._time_leads.append((last_released - last_captured) * 1000 + self.hold / ms)
            if len(self._time_leads) == 5:
                log.info("echo: reference leads the microphone by %.0f ms (stream time info)",
                         float(np.median(self._time_leads)))
        if self.mic_count >= self._next_estimate:
            self._next_estimate = self.mic_count + int(s.estimate_every_ms * ms)
            self._estimate_lead()
            if self.xcorr_lead_ms is None and len(self._time_leads) >= 5:
                self._adjust_hold(float(np.median(self._time_leads)), "stream time info")

    def _estimate_lead(self) -> None:
        """Cross-correlate the raw reference with the microphone while Moshi speaks: is there an echo path, and
        how far ahead of its echo is the reference? Held back when out of AEC3's range."""
        s = self.settings
        ms = s.sample_rate / 1000
        window, search = int(s.window_ms * ms), int(s.search_ms * ms)
        end = self.mic_count
        if end < window:
            return
        mic = self._mic_hist.get(end - window, end)
        # mic[j] hears ref[j - e]; e from -100 ms (reference late) to `search`
        ref = self._ref_hist.get(end - window - search, end + int(100 * ms))
        if _dbfs(float(np.mean(np.square(ref[-window - int(100 * ms):])))) < s.active_dbfs:
            return  # Moshi silent: nothing to learn
        sharpness = 0.0
        if _dbfs(float(np.mean(np.square(mic)))) >= s.active_dbfs - 20:
            shift, sharpness = gcc_phat_lag(_decimate(mic), _decimate(ref))
        if sharpness < NO_ECHO_SHARPNESS:  # Moshi speaks and the microphone does not hear it
            self._unheard += 1
            if self._unheard >= NO_ECHO_ESTIMATES and self.echo_path is not False:
                self.echo_path = False
                log.info("echo: Moshi's voice does not reach the microphone (headphones?): passing it untouched")
            return
        if sharpness < ECHO_SHARPNESS:
            return
        self._unheard = 0
        if self.echo_path is not True:
            log.info("echo: Moshi's voice reaches the microphone: cancelling")
        self.echo_path = True
        echo_delay = search - shift * DECIMATE  # e, in samples between the two streams' indices
        raw = (echo_delay + float(np.median(self._offsets))) / ms
        self.xcorr_lead_ms = raw
        self._adjust_hold(raw, "cross-correlation")

    def _adjust_hold(self, raw_lead_ms: float, source: str) -> None:
        s = self.settings
        ms = s.sample_rate / 1000
        lead = raw_lead_ms - self.hold / ms
        changed = False
        if lead > s.max_lead_ms or (self.hold and lead < s.min_lead_ms):
            new = max(0, int(round((raw_lead_ms - s.target_lead_ms) * ms / self.subframe))) * self.subframe
            self._set_hold(new)
            changed = True
            lead = raw_lead_ms - self.hold / ms
        if lead < 0 and not self._late_warned:
            self._late_warned = True
            log.warning("echo: the reference reaches the canceller %.0f ms after its echo (%s): "
                        "nothing can be cancelled", -lead, source)
        self.lead_ms = lead
        if changed:
            log.info("echo: reference leads its echo by %.0f ms (%s): held back %.0f ms, lead now %.0f ms",
                     raw_lead_ms, source, self.hold / ms, lead)
            self._logged_lead = lead
        elif source == "cross-correlation" and abs(lead - self._logged_lead) > 20:
            log.info("echo: reference leads its echo by %.0f ms (%s)", lead, source)
            self._logged_lead = lead

    def _set_hold(self, new: int) -> None:
        """Delay the reference by `new` samples; the count given to AEC3 per frame stays steady (zeros in, or
        the oldest samples skipped)."""
        if new > self.hold:
            self._pending = np.concatenate([np.zeros(new - self.hold, np.float32), self._pending])
        else:
            self._pending = self._pending[self.hold - new :]
        self.hold = new

    @property
    def hold_ms(self) -> float:
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

    @property
    def ms_per_frame(self) -> float:
        return self.cost_s * 1000 / self.frames if self.frames else 0.0


class CleanedMicrophone:
    """The microphone's device blocks (any rate, any channels) -> cleaned 24 kHz frames, for the live loop.

    Give it every captured block in arrival order, those the lag policy will drop included (a gap in the
    microphone stream that the reference does not have makes AEC3 realign); drop frames after it.
    """

    def __init__(self, canceller: EchoCanceller | None, device_rate: int, frame_size: int = 1920):
        from ..audio_io import Chunker

        self.canceller = canceller
        self.device_rate = device_rate
        rate = canceller.settings.sample_rate if canceller is not None else 24000
        self._resample = StreamResampler(device_rate, rate)
        self._frames = Chunker(frame_size)
        self._frame_s = frame_size / rate

    def __call__(self, block: np.ndarray, arrived: float | None = None,
                 adc_time: float | None = None) -> list[np.ndarray]:
        """One input callback's block, its `time.monotonic()` there and its `inputBufferAdcTime`."""
        frames = self._frames(self._resample(downmix(block)))
        if self.canceller is None:
            return frames
        # A frame completed by this block ends with it: its first sample was captured a frame before the block's end.
        end = None if adc_time is None else adc_time + len(block) / self.device_rate
        return [self.canceller.clean(frame, arrived, None if end is None else end - self._frame_s)
                for frame in frames]


def _decimate(x: np.ndarray) -> np.ndarray:
    n = len(x) // DECIMATE * DECIMATE
    return x[:n].reshape(-1, DECIMATE).mean(axis=1)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _rtc() -> Any:
    from livekit import rtc

    return rtc


def _new_apm(high_pass: bool) -> Any:
    from livekit.rtc.apm import AudioProcessingModule

    apm = AudioProcessingModule(echo_cancellation=True, high_pass_filter=high_pass,
                                noise_suppression=False, auto_gain_control=False)
    apm.set_stream_delay_ms(0)  # AEC3 finds the delay itself; the hint only has to be set
    return apm


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
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        message = f"warning: echo cancellation off: cannot load livekit's WebRTC audio processing ({reason}); " \
                  "use headphones"
        (warn or (lambda line: print(line, file=sys.stderr)))(message)
        return None
