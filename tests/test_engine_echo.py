"""The live engine with echo cancellation, on the virtual devices with a speaker -> microphone loopback.

Moshi's voice here is speech-like audio (the tiny random model's voice is mostly a steady buzz, which AEC3 treats
as noise), given by a codec stand-in; the engine, its callbacks, the canceller and the recorder are the real ones.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile
from test_echo_live import echo_path, level_db, medians  # noqa: F401  (a fixture)

from moshi_mlx.model.config import LmConfig
from moshi_mlx.stream.echo.canceller import EchoCanceller
from moshi_mlx.stream.echo.simulator import speech_like
from moshi_mlx.stream.engine import Engine
from moshi_mlx.stream.pipeline import Pipeline

pytestmark = pytest.mark.audio
SR, FRAME = 24000, 1920


class SpeakingCodec:
    """Mimi's interface with Moshi's voice replaced by speech-like audio, frame after frame."""

    sample_rate, frame_size, num_codebooks, cardinality, runs_off_thread = SR, FRAME, 8, 2048, True

    def __init__(self) -> None:
        self.voice = speech_like(30, seed=1)
        self.position = 0

    def encode(self, frame: np.ndarray) -> np.ndarray:
        return np.full(8, 7, np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        start, self.position = self.position, self.position + FRAME
        return self.voice[start : start + FRAME]

    def reset(self) -> None:
        self.position = 0

    def notices(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


def converse(tiny_model, tmp_path, aec: bool, monkeypatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, Engine]:
    from moshi_mlx.model.generate import LmGen
    from moshi_mlx.model.weights import load_lm

    lm = load_lm(tiny_model.moshi_weights, LmConfig.from_json(tiny_model.config))
    pipeline = Pipeline(LmGen(lm, seed=0), SpeakingCodec())
    given, cleaned = [], []
    clean = EchoCanceller.clean

    def spy(self, mic, *args, **kwargs):
        out = clean(self, mic, *args, **kwargs)
        given.append(mic.copy())
        cleaned.append(out.copy())
        return out

    monkeypatch.setattr(EchoCanceller, "clean", spy)
    from moshi_mlx.stream.recording import WavRecorder

    record = tmp_path / f"talk-{aec}.wav"
    engine = Engine(pipeline, recorder=WavRecorder(record, stereo=True), aec=aec, max_backlog=4)
    with engine:
        time.sleep(7.0)
    heard, _ = soundfile.read(str(record), dtype="float32")
    mic = np.concatenate(given) if given else np.zeros(0, np.float32)
    out = np.concatenate(cleaned) if cleaned else np.zeros(0, np.float32)
    return mic, out, heard[:, 0], engine


def test_engine_cancels_moshis_echo_and_records_what_mimi_heard(virtual_audio, echo_path, tiny_model,  # noqa: F811
                                                                tmp_path, monkeypatch):
    echo_path()
    mic, cleaned, heard, engine = converse(tiny_model, tmp_path, True, monkeypatch)
    assert engine.echo is not None and engine.echo.echo_path is True
    assert level_db(mic[SR:]) > -45  # Moshi's voice reaches the microphone
    assert medians(mic, cleaned, mic, 0.5, 1.0) >= 30
    # The recording's left channel is what Mimi was given: cleaned frames (those the lag policy kept).
    frames = cleaned.reshape(-1, FRAME)
    recorded = heard.reshape(-1, FRAME)
    kept = [np.argmin(np.abs(frames - r).max(axis=1)) for r in recorded[5:10]]
    assert all(np.abs(frames[k] - r).max() <= 1 / 32768 + 1e-6 for k, r in zip(kept, recorded[5:10], strict=True))


def test_without_the_canceller_the_echo_reaches_mimi(virtual_audio, echo_path, tiny_model,  # noqa: F811
                                                     tmp_path, monkeypatch):
    echo_path()
    _, _, heard, engine = converse(tiny_model, tmp_path, False, monkeypatch)
    assert engine.echo is None
    assert level_db(heard[SR:]) > -45  # the echo is in what Mimi heard
