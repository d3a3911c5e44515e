"""Echo cancellation (WebRTC AEC3 through livekit) on synthetic speech with a simulated room, no sound card."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import soxr
from helpers import level_db
from moshi_mlx.app import cli

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE
from moshi_mlx.stream.echo import aec3
from moshi_mlx.stream.echo.canceller import CleanedMicrophone, EchoCanceller, EchoSettings, make_echo_canceller
from moshi_mlx.stream.echo.lead import Ring, gcc_phat_lag
from moshi_mlx.stream.echo.simulator import convolve, echo_removed_db, parse_echo_spec, room_response, speech_like

SR, FRAME = SAMPLE_RATE, FRAME_SIZE
LEAD_LOG = "moshi_mlx.stream.echo.lead"  # the lead estimator's log lines (hold-back, echo path)


def windows_db(a: np.ndarray, b: np.ndarray, window_s: float, start_s: float = 0.0, stop_s: float | None = None,
               where: np.ndarray | None = None) -> np.ndarray:
    """level(a) - level(b) per window, over windows where `where` (default `b`) is above -45 dBFS."""
    n = int(window_s * SR)
    stop = len(a) if stop_s is None else int(stop_s * SR)
    where = b if where is None else where
    out = [level_db(a[i : i + n]) - level_db(b[i : i + n]) for i in range(int(start_s * SR), stop - n + 1, n)
           if level_db(where[i : i + n]) > -45]
    assert len(out) >= 5, "too few windows with signal"
    return np.array(out)


def cancel(mic: np.ndarray, reference: np.ndarray, canceller: EchoCanceller | None = None) -> np.ndarray:
    """The live loop's order: the speaker block is queued, then the microphone frame of the same slot is cleaned."""
    canceller = canceller or EchoCanceller()
    out = np.zeros_like(mic)
    for t in range(len(mic) // FRAME):
        s = slice(t * FRAME, (t + 1) * FRAME)
        canceller.add_reference(reference[s])
        out[s] = canceller.clean(mic[s])
    return out


def room_noise(seconds: float, seed: int = 9) -> np.ndarray:
    return (10 ** (-75 / 20) * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def moshi_voice() -> np.ndarray:
    return speech_like(10, seed=1)


@pytest.fixture(scope="module")
def user_voice() -> np.ndarray:
    return speech_like(10, seed=2, pitch=(180, 260))


def test_echo_is_30_db_down_after_the_first_second(moshi_voice):
    echo = convolve(moshi_voice, room_response(delay_ms=40))
    mic = echo + room_noise(10)
    canceller = EchoCanceller()
    out = cancel(mic, moshi_voice, canceller)
    removed = windows_db(echo, out, 0.5, start_s=1.0, where=echo)
    assert np.median(removed) >= 30, removed
    assert canceller.echo_reduction_db() >= 25
    assert canceller.lead_ms == pytest.approx(40, abs=5)  # the cross-correlation found the room's delay
    assert canceller.hold == 0


def test_without_its_reference_the_echo_passes(moshi_voice):
    echo = convolve(moshi_voice, room_response(delay_ms=40))
    out = cancel(echo + room_noise(10), np.zeros_like(moshi_voice))
    assert abs(np.median(windows_db(echo, out, 0.5, start_s=1.0, where=echo))) < 3


def test_double_talk_keeps_the_user_within_6_db(moshi_voice, user_voice):
    echo = convolve(moshi_voice, room_response(delay_ms=40))
    user = user_voice.copy()
    user[: 4 * SR] = 0  # Moshi alone for 4 s (the canceller converges), then both talk
    out = cancel(echo + user + room_noise(10), moshi_voice)
    # Windows where the user speaks and outweighs the residual echo the canceller leaves.
    change = windows_db(out, user, 0.1, start_s=4.0)
    assert abs(np.median(change)) <= 6, np.median(change)


def test_headphones_user_level_within_1_db(moshi_voice, user_voice):
    """No echo path at all while Moshi speaks (headphones): the canceller, on by default, leaves the user alone."""
    user = user_voice + room_noise(10)
    out = cancel(user, moshi_voice)
    change = windows_db(out, user, 0.1, start_s=0.5)
    assert abs(np.median(change)) <= 1, np.median(change)
    assert abs(level_db(out[SR // 2 :]) - level_db(user[SR // 2 :])) <= 1


def test_a_lead_beyond_range_is_held_back(moshi_voice, caplog):
    echo = convolve(moshi_voice, room_response(delay_ms=700))
    mic = echo + room_noise(10)
    canceller = EchoCanceller()
    with caplog.at_level(logging.INFO, logger=LEAD_LOG):
        out = cancel(mic, moshi_voice, canceller)
    assert canceller.xcorr_lead_ms == pytest.approx(700, abs=10)
    assert canceller.hold_ms == pytest.approx(700 - canceller.settings.target_lead_ms, abs=15)
    assert 50 <= canceller.lead_ms <= 200
    assert any("held back" in r.getMessage() for r in caplog.records)
    # Measured from 2 s on (the first estimate needs 0.5 s of Moshi's voice and its 700 ms echo).
    assert np.median(windows_db(echo, out, 0.5, start_s=3.0, where=echo)) >= 30
    # The same path without the hold-back cancels nothing: AEC3 alone does not look that far.
    wide = EchoCanceller(EchoSettings(max_lead_ms=10_000))
    out = cancel(mic, moshi_voice, wide)
    assert wide.hold == 0 and np.median(windows_db(echo, out, 0.5, start_s=3.0, where=echo)) < 10


def test_lead_from_stream_time_info_before_moshi_speaks(caplog):
    """Time info alone (the speaker plays each block 600 ms after the microphone's frame is captured)."""
    canceller = EchoCanceller()
    silence = np.zeros(FRAME, np.float32)
    with caplog.at_level(logging.INFO, logger=LEAD_LOG):
        for t in range(12):
            canceller.add_reference(silence, dac_time=t * 0.08 + 0.6)
            canceller.clean(silence, adc_time=t * 0.08)
    assert canceller.hold_ms == pytest.approx(600 - canceller.settings.target_lead_ms, abs=15)
    assert canceller.lead_ms == pytest.approx(canceller.settings.target_lead_ms, abs=15)
    assert any("stream time info" in r.getMessage() for r in caplog.records)


def test_reference_at_the_speakers_rate(moshi_voice):
    echo = convolve(moshi_voice, room_response(delay_ms=60))
    canceller = EchoCanceller(EchoSettings(reference_rate=48000))
    ref48 = soxr.resample(moshi_voice, SR, 48000).astype(np.float32)
    out = np.zeros_like(echo)
    for t in range(len(echo) // FRAME):
        s = slice(t * FRAME, (t + 1) * FRAME)
        canceller.add_reference(np.stack([ref48[2 * s.start : 2 * s.stop]] * 2, axis=1))  # stereo, 48 kHz
        out[s] = canceller.clean(echo[s])
    assert np.median(windows_db(echo, out, 0.5, start_s=1.0, where=echo)) >= 30


def test_reduction_is_none_while_moshi_is_silent():
    canceller = EchoCanceller()
    cancel(speech_like(2, seed=3), np.zeros(2 * SR, np.float32), canceller)
    assert canceller.echo_reduction_db() is None


def test_frames_must_be_whole_10_ms():
    with pytest.raises(ValueError, match="240"):
        EchoCanceller().clean(np.zeros(1000, np.float32))


def test_gcc_phat_finds_a_shift():
    x = np.random.default_rng(0).standard_normal(4000)
    assert gcc_phat_lag(x[1000:2000], x[700:3000])[0] == 300


def test_unloadable_canceller_is_one_warning(monkeypatch):
    def broken(high_pass):
        raise ImportError("No module named 'livekit'")

    monkeypatch.setattr(aec3, "_new_apm", broken)
    lines = []
    assert make_echo_canceller(True, warn=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("warning: echo cancellation off") and "\n" not in lines[0]
    assert make_echo_canceller(False, warn=lines.append) is None and len(lines) == 1


def test_echo_spec():
    assert parse_echo_spec("60") == (60.0, -6.0)
    assert parse_echo_spec("700:-12.5") == (700.0, -12.5)
    for bad in ("", "x", "60:loud", "-5", "60:", "nan", "60:inf"):
        with pytest.raises(ValueError):
            parse_echo_spec(bad)


def test_bad_simulate_echo_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", str(tmp_path / "in.wav"), "--out", str(tmp_path / "out.wav"), "--simulate-echo", "60:loud"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error:") and "DELAY_MS[:GAIN_DB]" in err and err.count("\n") == 1


def test_run_simulate_echo_end_to_end(tmp_path, tiny_model, capsys):
    source = tmp_path / "silence.wav"
    soundfile.write(str(source), np.zeros(4 * SR, np.float32), SR)
    results = {}
    for aec in ("on", "off"):
        out = tmp_path / f"{aec}.wav"
        cli.main(["run", str(source), "--out", str(out), "--stereo", "--seed", "1", "--quiet",
                  "--simulate-echo", "40:0", "--aec", aec, *tiny_model.cli_args()])
        results[aec] = soundfile.read(str(out), dtype="float32")[0], capsys.readouterr().err
    (on, report_on), (off, report_off) = results["on"], results["off"]
    # Off: the left channel (what Mimi heard) is Moshi's own voice, 40 ms after the slot that played it.
    delay = 40 * SR // 1000
    moshi = off[:, 1]
    played = np.concatenate([np.zeros(FRAME + delay, np.float32), moshi[:-FRAME - delay]])
    np.testing.assert_allclose(off[:, 0], played, atol=2e-4)
    assert level_db(off[SR:, 0]) > -40 and "0.0 dB removed" in report_off
    # On: what Mimi heard is the live loop's cancellation of that echo, replayed here on the recorded voices.
    moshi = on[:, 1]
    played = np.concatenate([np.zeros(FRAME, np.float32), moshi[:-FRAME]])
    echo = np.concatenate([np.zeros(delay, np.float32), played[:-delay]])
    np.testing.assert_allclose(on[:, 0], cancel(echo, played), atol=2e-4)
    reported = float(report_on.split(" dB removed")[0].rsplit(" ", 1)[1])
    assert reported == pytest.approx(echo_removed_db(echo, on[:, 0], echo, np.zeros_like(echo)), abs=0.2)
    assert "reference lead 40 ms" in report_on


def test_ring_keeps_the_last_samples_by_index():
    for chunks in ([700, 1800], [300, 300, 300, 300, 1], [999, 2, 1500]):
        ring, data = Ring(1000), np.arange(sum(chunks), dtype=np.float32)
        start = 0
        for c in chunks:
            ring.append(data[start : start + c])
            start += c
        n = len(data)
        for a, b in [(n - 1100, n + 100), (n - 900, n), (0, 100), (n - 1001, n - 999), (n - 1, n + 100)]:
            expected = np.array([data[i] if n - 1000 <= i < n else 0 for i in range(a, b)], np.float32)
            np.testing.assert_array_equal(ring.get(a, b), expected)


def test_cleaned_microphone_from_48k_stereo_blocks(moshi_voice):
    """Device blocks of 1024 frames at 48 kHz in, cleaned 24 kHz frames out; the reference at 24 kHz."""
    echo = convolve(moshi_voice, room_response(delay_ms=60))
    mic48 = soxr.resample(echo, SR, 48000).astype(np.float32)
    canceller = EchoCanceller()
    mic = CleanedMicrophone(canceller, 48000)
    out, fed = [], 0
    for start in range(0, len(mic48) - 1024, 1024):
        while fed < (start + 1024) // 2:  # the speaker's blocks that arrived before this microphone block
            canceller.add_reference(moshi_voice[fed : fed + FRAME])
            fed += FRAME
        out += mic(np.stack([mic48[start : start + 1024]] * 2, axis=1), adc_time=start / 48000)
    out = np.concatenate(out)
    assert all(len(x) == FRAME for x in out.reshape(-1, FRAME)) and len(out) >= len(echo) - 2 * FRAME
    reference = echo[: len(out)]
    assert np.median(windows_db(reference, out, 0.5, start_s=1.0, where=reference)) >= 30
    assert CleanedMicrophone(None, 24000)(np.ones((1920, 1), np.float32))[0].shape == (FRAME,)
