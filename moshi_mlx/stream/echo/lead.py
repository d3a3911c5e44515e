"""How far the speaker's reference leads its echo in the microphone, and whether the microphone hears it at all.

Two sources: the streams' time info (the DAC time of a reference block, the ADC time of a microphone frame), and a
GCC-PHAT cross-correlation of the two signals while Moshi speaks, every `estimate_every_ms`. A lead beyond AEC3's
range is brought back into it by holding the reference back; no echo while Moshi speaks means headphones.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from .aec3 import SUBFRAME_MS

if TYPE_CHECKING:
    from .canceller import EchoSettings

log = logging.getLogger(__name__)

DECIMATE = 4  # cross-correlation runs at 6 kHz
# Thresholds on the GCC-PHAT peak over the correlation's RMS: an echo's peak (double talk included) stands above
# ECHO_SHARPNESS, no echo stays below NO_ECHO_SHARPNESS; in between nothing is decided.
ECHO_SHARPNESS, NO_ECHO_SHARPNESS = 10.0, 7.0
NO_ECHO_ESTIMATES = 3  # estimates in a row (`estimate_every_ms` apart) without an echo before the bypass


def dbfs(energy: float) -> float:
    """Mean square energy in dB full scale (-inf for silence)."""
    return 10 * math.log10(energy) if energy > 0 else -math.inf


class Ring:
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


def _decimate(x: np.ndarray) -> np.ndarray:
    n = len(x) // DECIMATE * DECIMATE
    return x[:n].reshape(-1, DECIMATE).mean(axis=1)


class LeadEstimator:
    """The lead of the reference over its echo, the hold-back that keeps it in AEC3's range, and the echo path.

    Fed every reference block as it is taken from the queue (`add_reference`) and every microphone frame after
    AEC3 has cleaned it (`observe`), which returns the hold-back to apply. Hold-backs are in samples, whole 10 ms.
    """

    def __init__(self, settings: EchoSettings):
        self.settings = s = settings
        ms = s.sample_rate // 1000
        self.subframe = s.sample_rate * SUBFRAME_MS // 1000
        self.ref_count = 0  # reference samples taken from the queue so far
        self.mic_count = 0  # microphone samples cleaned so far
        history = int((s.search_ms + s.window_ms + 500) * ms)
        self._ref_hist, self._mic_hist = Ring(history), Ring(history)
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

    def add_reference(self, block: np.ndarray, dac_time: float | None) -> None:
        """A reference block at the canceller's rate and `dac_time`, when its first sample reaches the speaker."""
        if dac_time is not None:
            self._dac_anchor = (self.ref_count, dac_time)
        self.ref_count += len(block)
        self._ref_hist.append(block)

    def observe(self, mic: np.ndarray, unreleased: int, hold: int, adc_time: float | None) -> int:
        """One microphone frame, once `unreleased` reference samples (the `hold` held back included) are still
        to be given to AEC3; `adc_time`: when its first sample was captured. Returns the hold-back from now on."""
        s = self.settings
        ms = s.sample_rate / 1000
        self.mic_count += len(mic)
        self._mic_hist.append(mic)
        released_end = self.ref_count - unreleased  # next reference index not yet given to AEC3
        self._offsets.append(released_end + hold - self.mic_count)
        if adc_time is not None and self._dac_anchor is not None:
            index, dac = self._dac_anchor
            last_released = dac + (released_end - 1 - index) / s.sample_rate
            last_captured = adc_time + (len(mic) - 1) / s.sample_rate
            self._time_leads.append((last_released - last_captured) * 1000 + hold / ms)
            if len(self._time_leads) == 5:
                log.info("echo: reference leads the microphone by %.0f ms (stream time info)",
                         float(np.median(self._time_leads)))
        if self.mic_count >= self._next_estimate:
            self._next_estimate = self.mic_count + int(s.estimate_every_ms * ms)
            hold = self._estimate(hold)
            if self.xcorr_lead_ms is None and len(self._time_leads) >= 5:
                hold = self._adjust_hold(float(np.median(self._time_leads)), "stream time info", hold)
        return hold

    def _estimate(self, hold: int) -> int:
        """Cross-correlate the raw reference with the microphone while Moshi speaks: is there an echo path, and
        how far ahead of its echo is the reference? Held back when out of AEC3's range."""
        s = self.settings
        ms = s.sample_rate / 1000
        window, search = int(s.window_ms * ms), int(s.search_ms * ms)
        end = self.mic_count
        if end < window:
            return hold
        mic = self._mic_hist.get(end - window, end)
        # mic[j] hears ref[j - e]; e from -100 ms (reference late) to `search`
        ref = self._ref_hist.get(end - window - search, end + int(100 * ms))
        if dbfs(float(np.mean(np.square(ref[-window - int(100 * ms):])))) < s.active_dbfs:
            return hold  # Moshi silent: nothing to learn
        sharpness = 0.0
        if dbfs(float(np.mean(np.square(mic)))) >= s.active_dbfs - 20:
            shift, sharpness = gcc_phat_lag(_decimate(mic), _decimate(ref))
        if sharpness < NO_ECHO_SHARPNESS:  # Moshi speaks and the microphone does not hear it
            self._unheard += 1
            if self._unheard >= NO_ECHO_ESTIMATES and self.echo_path is not False:
                self.echo_path = False
                log.info("echo: Moshi's voice does not reach the microphone (headphones?): passing it untouched")
            return hold
        if sharpness < ECHO_SHARPNESS:
            return hold
        self._unheard = 0
        if self.echo_path is not True:
            log.info("echo: Moshi's voice reaches the microphone: cancelling")
        self.echo_path = True
        echo_delay = search - shift * DECIMATE  # e, in samples between the two streams' indices
        raw = (echo_delay + float(np.median(self._offsets))) / ms
        self.xcorr_lead_ms = raw
        return self._adjust_hold(raw, "cross-correlation", hold)

    def _adjust_hold(self, raw_lead_ms: float, source: str, hold: int) -> int:
        """The hold-back for a lead of `raw_lead_ms` before any hold-back: a new one when the lead AEC3 sees is out
        of range, else `hold`."""
        s = self.settings
        ms = s.sample_rate / 1000
        lead = raw_lead_ms - hold / ms
        changed = False
        if lead > s.max_lead_ms or (hold and lead < s.min_lead_ms):
            hold = max(0, int(round((raw_lead_ms - s.target_lead_ms) * ms / self.subframe))) * self.subframe
            changed = True
            lead = raw_lead_ms - hold / ms
        if lead < 0 and not self._late_warned:
            self._late_warned = True
            log.warning("echo: the reference reaches the canceller %.0f ms after its echo (%s): "
                        "nothing can be cancelled", -lead, source)
        self.lead_ms = lead
        if changed:
            log.info("echo: reference leads its echo by %.0f ms (%s): held back %.0f ms, lead now %.0f ms",
                     raw_lead_ms, source, hold / ms, lead)
            self._logged_lead = lead
        elif source == "cross-correlation" and abs(lead - self._logged_lead) > 20:
            log.info("echo: reference leads its echo by %.0f ms (%s)", lead, source)
            self._logged_lead = lead
        return hold
