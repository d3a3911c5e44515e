"""Mouth-to-ear latency: its arithmetic, the capture times through resampling, the speaker queue's bookkeeping."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from moshi_mlx.codec import FRAME_S, FRAME_SIZE
from moshi_mlx.stream.audio_io import StreamSettings
from moshi_mlx.stream.devices import AudioDevices
from moshi_mlx.stream.echo.canceller import CleanedMicrophone
from moshi_mlx.stream.latency import (
    PARTS,
    FrameTimes,
    LatencyMeter,
    LatencySample,
    loop_sample,
    measure,
    to_monotonic,
)
from moshi_mlx.stream.speaker_queue import SpeakerQueue


def test_to_monotonic_moves_stream_times_to_the_callbacks_clock():
    assert to_monotonic(105.0, 100.0, now=7.0, fallback=1.0) == pytest.approx(12.0)
    assert to_monotonic(95.5, 100.0, now=7.0, fallback=1.0) == pytest.approx(2.5)
    assert to_monotonic(0.0, 0.0, now=7.0, fallback=6.92) == 6.92  # a host API without times


def test_the_parts_add_up_to_dac_minus_adc():
    origin = FrameTimes(captured=10.0)
    step = FrameTimes(captured=10.0 + FRAME_S, arrived=10.0 + 2 * FRAME_S + 0.004, encode_start=10.17,
                      encoded=10.19, lm_done=10.21, decoded=10.24)
    sample = measure(origin, step, callback=10.28, dac=10.30, offset_s=0.005)
    assert set(sample.parts) == set(PARTS)
    assert sample.total_ms == pytest.approx((10.30 + 0.005 - 10.0) * 1000)
    assert sample.parts["frames"] == pytest.approx(160.0)
    assert sample.parts["capture"] == pytest.approx(4.0)
    assert sample.parts["device_output"] == pytest.approx(20.0)
    assert sample.parts["speaker_queue"] == pytest.approx((10.285 - 10.24) * 1000)


def test_a_skipped_frame_between_origin_and_step_counts_in_frames():
    """The lag policy dropped a frame: the step's input was captured two frames after the origin."""
    origin = FrameTimes(captured=10.0)
    step = FrameTimes(captured=10.0 + 2 * FRAME_S, arrived=10.25, encode_start=10.25, encoded=10.26,
                      lm_done=10.27, decoded=10.28)
    assert measure(origin, step, 10.29, 10.30, 0.0).parts["frames"] == pytest.approx(240.0)


def test_meter_summary_and_recent_median():
    meter = LatencyMeter(recent_s=1.0)
    for i in range(100):  # 200 ms for 8 s, then 400 ms for the last second
        total = 200.0 if i < 88 else 400.0
        meter.add(LatencySample(i * FRAME_S, {"frames": 160.0, "lm": total - 160.0}))
    assert meter.recent_ms() == pytest.approx(400.0)
    summary = meter.summary()
    assert summary.count == 100 and summary.median_ms == 200 and summary.max_ms == pytest.approx(400.0)
    assert summary.p90_ms == 400
    assert "median 200 ms, p90 400 ms, max 400 ms over 100 frames" in summary.describe()
    assert LatencyMeter().summary().describe().startswith("not measured")


def test_loop_sample_is_the_compute_and_queue_part():
    sample = loop_sample(FrameTimes(encode_start=1.0, encoded=1.02, lm_done=1.05, decoded=1.06))
    assert sample.parts == pytest.approx({"encode": 20.0, "lm": 30.0, "decode": 10.0})


@pytest.mark.parametrize("device_rate", [24000, 48000, 44100, 16000])
def test_capture_times_through_the_resampler(device_rate):
    """Frame j's first sample is the device's sample j * 1920 * rate / 24000: its ADC time follows from the block's."""
    mic = CleanedMicrophone(None, device_rate)
    block = round(FRAME_SIZE * device_rate / 24000)
    times = []
    for i in range(40):
        mic(np.zeros(block, np.float32), arrived=0.0, adc_time=100.0 + i * block / device_rate)
        times += mic.captured
    assert len(times) >= 38
    assert np.allclose(times, 100.0 + np.arange(len(times)) * FRAME_S, atol=1e-9)


def _devices(rate: int = 24000) -> AudioDevices:
    devices = AudioDevices()
    settings = StreamSettings(None, rate, 1, round(FRAME_SIZE * rate / 24000))
    devices._use(settings, settings)
    return devices


def _callback(devices: AudioDevices, now: float) -> np.ndarray:
    out = np.zeros((devices.stats.output.blocksize, 1), np.float32)
    info = SimpleNamespace(currentTime=now, outputBufferDacTime=now + 0.02, inputBufferAdcTime=0.0)
    devices._on_output(out, len(out), info, SimpleNamespace(output_underflow=False))
    return out[:, 0]


def test_a_frame_is_reported_when_its_first_sample_is_handed_out():
    devices = _devices()
    devices.play(np.full(FRAME_SIZE, 0.5, np.float32), tag="frame 1")
    devices.play(np.full(FRAME_SIZE, 0.25, np.float32), tag="frame 2")
    assert np.all(_callback(devices, 50.0) == 0.5)
    [(tag, callback, dac, offset)] = devices.played
    assert (tag, offset) == ("frame 1", 0.0) and dac - callback == pytest.approx(0.02)
    devices.played.clear()
    _callback(devices, 50.08)
    assert [tag for tag, *_ in devices.played] == ["frame 2"]


def test_a_backlog_left_by_a_hiccup_is_trimmed_within_a_window():
    """Four extra blocks stay queued after a burst: they are dropped within one window of callbacks, and the
    queue then keeps up with one block a callback without an underrun."""
    devices = _devices()
    for _ in range(4):  # the burst after a stall
        devices.play(np.zeros(FRAME_SIZE, np.float32), tag="late")
    for i in range(2 * devices.speaker.trim_window):
        devices.play(np.zeros(FRAME_SIZE, np.float32), tag=i)
        _callback(devices, 50.0 + i * FRAME_S)
    assert devices.stats.output_trimmed == 4 and devices.stats.underruns == 0
    assert len(devices.speaker) == 0


def test_a_queue_that_runs_dry_now_and_then_is_not_trimmed():
    devices = _devices()
    for i in range(3 * devices.speaker.trim_window):
        if i % 5:  # every fifth frame comes late, then two at once
            devices.play(np.zeros(FRAME_SIZE, np.float32), tag=i)
        if i % 5 == 1 and i > 1:
            devices.play(np.zeros(FRAME_SIZE, np.float32), tag=-i)
        _callback(devices, 50.0 + i * FRAME_S)
    assert devices.stats.output_trimmed == 0


def test_the_spare_covers_the_decoders_jitter_and_ignores_a_stall():
    """Arrivals every 80 ms, every tenth 35 ms late: two 20 ms blocks cover it; a 1 s stall is not jitter."""
    speaker = SpeakerQueue(24000, 480, SimpleNamespace(output_dropped=0, output_trimmed=0))
    frame, now = np.zeros(FRAME_SIZE, np.float32), 100.0
    for i in range(200):
        now += FRAME_S + (0.035 if i % 10 == 5 else 0.0) - (0.035 if i % 10 == 6 else 0.0)
        speaker.put(frame, now=now)
    assert speaker.spare == 2
    speaker.put(frame, now=now + 1.0)
    assert speaker.spare == 2


def test_the_spare_holds_still_while_the_jitter_does():
    """The same random jitter for a long while: the spare settles and then does not wander."""
    speaker = SpeakerQueue(24000, 480, SimpleNamespace(output_dropped=0, output_trimmed=0))
    frame, spares = np.zeros(FRAME_SIZE, np.float32), []
    lateness = np.random.default_rng(0).exponential(0.008, 3000)
    for i, late in enumerate(lateness):
        speaker.put(frame, now=100.0 + i * FRAME_S + late)
        spares.append(speaker.spare)
    assert len(set(spares[1000:])) == 1 and 1 <= spares[-1] <= 3
