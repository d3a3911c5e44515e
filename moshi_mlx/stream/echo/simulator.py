"""A simulated echo path for checks without a sound card: Moshi's voice played back into its own input.

`run --simulate-echo DELAY_MS[:GAIN_DB]` plays each step's output in the next 80 ms slot, like a speaker; the
microphone of slot t hears that playback DELAY_MS later at GAIN_DB, added to the input file, and the echo
canceller cleans it as the live loop does (reference = what the speaker played, queued before the microphone frame).
Also synthetic speech-like signals and a room-like echo path, for the tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...codec import SAMPLE_RATE
from ..audio_io import read_mono_24k
from ..filemode import FileResult, open_outputs
from ..outputs import FrameOutputs, whole_frames
from ..pipeline import FrameEvent, Pipeline
from ..recording import TranscriptWriter, WavRecorder
from .canceller import EchoCanceller

WINDOW_S = 0.5  # echo removal is reported as the median over windows this long


@dataclass
class EchoFileResult(FileResult):
    """`FileResult` (with `user` = what Mimi was given, after cancellation) plus the simulated echo's figures."""

    mic: np.ndarray | None = None  # input + echo, before cancellation (kept when asked)
    echo: np.ndarray | None = None  # the echo alone (kept when asked)
    echo_removed_db: float | None = None  # median over echo-dominated 0.5 s windows; None without such windows
    lead_ms: float | None = None  # the canceller's estimate of the lead AEC3 saw (after any hold-back)
    hold_ms: float = 0.0  # how long the reference was held back at the end


class _RemovalWindows:
    """Echo removal per 0.5 s window, computed as samples stream in (nothing kept but one figure per window)."""

    def __init__(self, window_s: float = WINDOW_S):
        self.size = int(window_s * SAMPLE_RATE)
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._held = 0
        self.values: list[float] = []

    def add(self, mic: np.ndarray, cleaned: np.ndarray, echo: np.ndarray, user: np.ndarray) -> None:
        self._parts.append((mic, cleaned, echo, user))
        self._held += len(mic)
        while self._held >= self.size:
            mic, cleaned, echo, user = (np.concatenate(column) for column in zip(*self._parts, strict=True))
            rest = tuple(x[self.size :] for x in (mic, cleaned, echo, user))
            self._parts, self._held = [rest], len(rest[0])
            energy = [float(np.mean(np.square(x[: self.size], dtype=np.float64))) for x in (mic, cleaned, echo, user)]
            if energy[2] > 1e-6 and energy[2] > 10 * energy[3]:  # the echo above -60 dBFS and 10 dB over the user
                self.values.append(10 * np.log10(energy[0] / max(energy[1], 1e-14)))

    @property
    def median(self) -> float | None:
        return float(np.median(self.values)) if self.values else None


def echo_removed_db(mic: np.ndarray, cleaned: np.ndarray, echo: np.ndarray, user: np.ndarray) -> float | None:
    """Median over 0.5 s windows where the echo is above -60 dBFS and 10 dB above the user of
    10 log10(microphone energy / cleaned energy)."""
    windows = _RemovalWindows()
    windows.add(mic, cleaned, echo, user)
    return windows.median


def run_frames_with_echo(
    pipeline: Pipeline,
    audio: np.ndarray,
    delay_ms: float,
    gain_db: float,
    canceller: EchoCanceller | None,
    recorder: WavRecorder | None = None,
    transcript: TranscriptWriter | None = None,
    on_event: Callable[[FrameEvent], None] | None = None,
    keep: bool = True,
) -> EchoFileResult:
    """Like `filemode.run_frames`, with Moshi's own voice echoed into its input (and cancelled when `canceller`).

    One frame at a time (`Pipeline.step`): slot t plays step t-1's output, which the microphone of slot t must hear.
    `keep`: also return Moshi's voice, the microphone, the echo and the events (else memory stays flat).
    """
    if pipeline.gen.step_index > 0:
        pipeline.reset()
    size = pipeline.frame_size
    user = whole_frames(audio, size)
    count = len(user)
    gain = 10 ** (gain_db / 20)
    heard = np.zeros_like(user)
    mic, echo = (np.zeros_like(user) if keep else None for _ in range(2))
    line = np.zeros(int(round(delay_ms * SAMPLE_RATE / 1000)), np.float32)  # the speaker-to-microphone delay
    played = np.zeros(size, np.float32)  # what the speaker plays in this slot: the previous step's output
    windows = _RemovalWindows()
    outputs = FrameOutputs(recorder, transcript, on_event, count if keep else 0, size)
    for t in range(count):
        line = np.concatenate([line, played])
        echo_t, line = gain * line[:size], line[size:]
        mic_t = user[t] + echo_t
        if canceller is not None:
            canceller.add_reference(played)  # the output callback runs before this slot's microphone frame
            heard[t] = canceller.clean(mic_t)
        else:
            heard[t] = mic_t
        windows.add(mic_t, heard[t], echo_t, user[t])
        event, pcm = pipeline.step(heard[t])
        played = np.zeros(size, np.float32) if pcm is None else np.asarray(pcm, np.float32)
        if keep:
            mic[t], echo[t] = mic_t, echo_t
        outputs(event, heard[t], pcm)
    return EchoFileResult(
        user=heard.reshape(-1), **outputs.kept(),
        mic=mic.reshape(-1) if keep else None, echo=echo.reshape(-1) if keep else None,
        echo_removed_db=windows.median,
        lead_ms=canceller.lead_ms if canceller is not None else None,
        hold_ms=canceller.hold_ms if canceller is not None else 0.0,
    )


def run_file_with_echo(
    pipeline: Pipeline,
    source: str | Path | np.ndarray,
    out_path: str | Path,
    delay_ms: float,
    gain_db: float,
    canceller: EchoCanceller | None,
    transcript_path: str | Path | None = None,
    stereo: bool = False,
    on_event: Callable[[FrameEvent], None] | None = None,
) -> EchoFileResult:
    """`filemode.run_file` with the simulated echo; the stereo recording's left channel is what Mimi was given."""
    audio = source if isinstance(source, np.ndarray) else read_mono_24k(source)
    with open_outputs(out_path, transcript_path, stereo) as (recorder, transcript):
        return run_frames_with_echo(pipeline, audio, delay_ms, gain_db, canceller, recorder, transcript, on_event,
                                    keep=False)


def parse_echo_spec(text: str) -> tuple[float, float]:
    """`DELAY_MS[:GAIN_DB]` -> (delay in ms, gain in dB; -6 when not given). ValueError when malformed."""
    delay_text, colon, gain_text = text.partition(":")
    try:
        delay, gain = float(delay_text), float(gain_text) if colon else -6.0
    except ValueError:
        raise ValueError(f"{text!r} is not DELAY_MS[:GAIN_DB] (e.g. 60 or 60:-6)") from None
    if not np.isfinite(delay) or not np.isfinite(gain) or delay < 0 or delay > 5000:
        raise ValueError(f"{text!r}: the delay must be 0 to 5000 ms and the gain a number of dB")
    return delay, gain


# --- synthetic signals for the tests and benchmarks ---


def speech_like(seconds: float, seed: int = 0, pitch: tuple[float, float] = (100.0, 180.0),
                level_dbfs: float = -20.0, pauses: float = 0.25) -> np.ndarray:
    """Voiced syllables (a gliding pitch, three random formants, some breath noise) with pauses, 24 kHz."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    pos = int(rng.uniform(0, 0.1) * SAMPLE_RATE)
    harmonics = np.arange(1, int(4000 / pitch[0]) + 1)[:, None]
    while pos < len(out):
        n = int(rng.uniform(0.12, 0.3) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.uniform(*pitch) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        freqs = harmonics * f0[None, :]
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
        amp = sum(np.exp(-0.5 * ((freqs - f) / (80 + 0.08 * f)) ** 2) for f in formants) / np.sqrt(harmonics)
        y = (amp * (freqs < 4500) * np.sin(harmonics * phase[None, :])).sum(axis=0)
        y += rng.standard_normal(n) * y.std() * (0.1 if rng.random() < 0.7 else 1.0)
        y *= np.hanning(n)
        out[pos : pos + n] += y[: len(out) - pos]
        pos += n - int(0.03 * SAMPLE_RATE)
        if rng.random() < pauses:
            pos += int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)
    out *= 10 ** (level_dbfs / 20) / (np.sqrt(np.mean(np.square(out))) + 1e-12)
    return out.astype(np.float32)


def room_response(delay_ms: float, gain_db: float = 0.0, tail_ms: float = 60.0, seed: int = 1) -> np.ndarray:
    """An echo path: a bulk delay, the direct sound, decaying reflections 6 dB below it, a gentle low-pass."""
    rng = np.random.default_rng(seed)
    delay, n = int(delay_ms * SAMPLE_RATE / 1000), int(tail_ms * SAMPLE_RATE / 1000)
    h = np.zeros(delay + n, np.float64)
    tail = rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 5))
    h[delay : delay + n] = tail * 0.5 / np.sqrt(np.sum(np.square(tail)))
    h[delay] = 1.0
    h = np.convolve(h, [0.25, 0.5, 0.25])[: len(h)]
    return (h * 10 ** (gain_db / 20)).astype(np.float32)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """`x` through the filter `h`, same length as `x` (FFT convolution)."""
    n = 1 << (len(x) + len(h) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(h, n), n)[: len(x)].astype(np.float32)
