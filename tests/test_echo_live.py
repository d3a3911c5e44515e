"""Echo cancellation on the virtual PulseAudio devices, with a loopback from the speaker's monitor into the microphone.

The loop here is the live wiring in miniature: the output callback writes Moshi's block and queues it as the
reference (with its DAC time), the input callback queues the microphone block (with its arrival and ADC times),
and a worker thread cleans each microphone block in arrival order.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile
from helpers import level_db

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE
from moshi_mlx.stream.echo.canceller import EchoCanceller
from moshi_mlx.stream.echo.simulator import speech_like

pytestmark = pytest.mark.audio

SR, FRAME = SAMPLE_RATE, FRAME_SIZE


def medians(a: np.ndarray, b: np.ndarray, where: np.ndarray, window_s: float, start_s: float) -> float:
    n = int(window_s * SR)
    values = [level_db(a[i : i + n]) - level_db(b[i : i + n]) for i in range(int(start_s * SR), len(a) - n, n)
              if level_db(where[i : i + n]) > -45]
    assert len(values) >= 4, "too few windows with signal"
    return float(np.median(values))


def align(signal: np.ndarray, within: np.ndarray) -> np.ndarray:
    """`signal` placed where it best matches inside `within` (zeros elsewhere)."""
    n = 1 << (len(signal) + len(within)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(within, n) * np.conj(np.fft.rfft(signal, n)), n)[: len(within)]
    shift = int(np.argmax(corr))
    out = np.zeros_like(within)
    piece = signal[: len(within) - shift]
    out[shift : shift + len(piece)] = piece
    return out


class EchoLoop:
    """Moshi's voice to the default speaker, the default microphone cleaned by an `EchoCanceller` in a worker."""

    def __init__(self, voice: np.ndarray):
        self.voice, self.canceller = voice, EchoCanceller()
        self.mic: list[np.ndarray] = []
        self.cleaned: list[np.ndarray] = []
        self._queue: queue.Queue = queue.Queue()
        self._played = 0

    def _on_output(self, outdata, frames, time_info, status) -> None:
        block = np.zeros(frames, np.float32)
        piece = self.voice[self._played : self._played + frames]
        block[: len(piece)] = piece
        self._played += frames
        outdata[:, 0] = block
        self.canceller.add_reference(block, time_info.outputBufferDacTime)

    def _on_input(self, indata, frames, time_info, status) -> None:
        self._queue.put((indata[:, 0].copy(), time.monotonic(), time_info.inputBufferAdcTime))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            mic, arrived, adc = item
            self.mic.append(mic)
            self.cleaned.append(self.canceller.clean(mic, arrived, adc))

    def run(self, seconds: float, user=None, user_at: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        import sounddevice as sd

        worker = threading.Thread(target=self._work)
        worker.start()
        kwargs = dict(samplerate=SR, channels=1, blocksize=FRAME, dtype="float32")
        try:
            with sd.OutputStream(callback=self._on_output, **kwargs), sd.InputStream(callback=self._on_input,
                                                                                      **kwargs):
                time.sleep(user_at)
                player = user() if user is not None else None
                time.sleep(seconds - user_at)
                if player is not None:
                    player.wait(10)
        finally:
            self._queue.put(None)
            worker.join()
        return np.concatenate(self.mic), np.concatenate(self.cleaned)


@pytest.fixture
def echo_path(virtual_audio):
    """A loopback vspeaker.monitor -> vmicsink at -6 dB; `extra_ms` more delay than its 60 ms when asked."""
    modules = []

    def make(extra_ms: float = 0.0) -> None:
        def pactl(*args: str) -> str:
            return subprocess.run(["pactl", *args], env=virtual_audio.env, capture_output=True, text=True,
                                  check=True, timeout=10).stdout

        before = set(pactl("list", "short", "sink-inputs").split("\n"))
        modules.append(pactl("load-module", "module-loopback", "source=vspeaker.monitor", "sink=vmicsink",
                             f"latency_msec={60 + extra_ms:.0f}").strip())
        deadline = time.monotonic() + 5
        while not (new := set(pactl("list", "short", "sink-inputs").split("\n")) - before):
            assert time.monotonic() < deadline, "the loopback did not appear"
            time.sleep(0.05)
        pactl("set-sink-input-volume", next(iter(new)).split()[0], "-6dB")

    yield make
    for module in modules:
        subprocess.run(["pactl", "unload-module", module], env=virtual_audio.env, capture_output=True, timeout=10)


def user_player(virtual_audio, tmp_path, voice: np.ndarray):
    wav = tmp_path / "user.wav"
    soundfile.write(str(wav), voice, SR, subtype="PCM_16")
    return lambda: virtual_audio.play(wav)


def test_echo_removed_live(virtual_audio, echo_path, caplog):
    echo_path()
    loop = EchoLoop(speech_like(8, seed=1))
    with caplog.at_level(logging.INFO, logger="moshi_mlx.stream.echo.lead"):
        mic, cleaned = loop.run(8)
    assert level_db(mic[SR:]) > -45  # the echo reaches the microphone
    assert medians(mic, cleaned, mic, 0.5, 1.0) >= 30
    assert loop.canceller.echo_path is True and 0 < loop.canceller.lead_ms < 450
    assert any("leads" in r.getMessage() for r in caplog.records)


def test_double_talk_live(virtual_audio, echo_path, tmp_path):
    echo_path()
    user = speech_like(4, seed=2, pitch=(180, 260))
    loop = EchoLoop(speech_like(9, seed=1))
    mic, cleaned = loop.run(9, user_player(virtual_audio, tmp_path, user), user_at=3.0)
    placed = align(user, cleaned)  # where the user's voice is in the cleaned signal (AEC3 adds 9 ms)
    change = medians(cleaned, placed, placed, 0.1, 3.0)
    assert abs(change) <= 6


def test_headphones_live(virtual_audio, tmp_path):
    """No echo path: the user's level within 1 dB while Moshi speaks."""
    user = speech_like(4, seed=2, pitch=(180, 260))
    loop = EchoLoop(speech_like(8, seed=1))
    mic, cleaned = loop.run(8, user_player(virtual_audio, tmp_path, user), user_at=3.0)
    placed = align(user, cleaned)
    assert loop.canceller.echo_path is False
    assert abs(medians(cleaned, placed, placed, 0.1, 3.0)) <= 1


def test_lead_beyond_range_live(virtual_audio, echo_path, caplog):
    echo_path(extra_ms=600)
    loop = EchoLoop(speech_like(10, seed=1))
    with caplog.at_level(logging.INFO, logger="moshi_mlx.stream.echo.lead"):
        mic, cleaned = loop.run(10)
    assert loop.canceller.hold_ms > 300 and 0 < loop.canceller.lead_ms < 450
    assert any("held back" in r.getMessage() for r in caplog.records)
    assert medians(mic, cleaned, mic, 0.5, 4.0) >= 30
