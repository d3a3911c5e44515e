"""The live engine on a real PulseAudio server with a virtual microphone and speaker.

Mimi alone takes longer than 80 ms per frame on the 2-core test machine, so the lag policy has to act here:
the tests check that it does what it says rather than assume a fast machine.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import soundfile
from helpers import load_pipeline

from moshi_mlx import MoshiError
from moshi_mlx.devtools.virtual_audio import speech_wav
from moshi_mlx.stream.audio_io import BLOCKS_PER_FRAME
from moshi_mlx.stream.engine import Engine
from moshi_mlx.stream.recording import TranscriptWriter, WavRecorder

pytestmark = pytest.mark.audio
FRAME = 1920
BLOCK_MS = 1000 * FRAME / 24000 / BLOCKS_PER_FRAME


def best_match(template: np.ndarray, signal: np.ndarray) -> float:
    """Highest normalised correlation of `template` with a window of `signal` of similar energy (FFT-based)."""
    template, signal = template.astype(np.float64), signal.astype(np.float64)
    size = 1 << (len(signal) + len(template)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(template, size)), size)
    corr = corr[: len(signal) - len(template) + 1]
    energy = np.sum(template**2)
    cumulative = np.concatenate([[0.0], np.cumsum(signal**2)])
    window = cumulative[len(template) :] - cumulative[: -len(template)]
    valid = window > 0.25 * energy  # near-silent windows would divide rounding noise by almost nothing
    return float(np.max(corr[valid] / np.sqrt(window[valid] * energy), initial=0.0))


def loudest_frame(x: np.ndarray) -> np.ndarray:
    """The loudest whole 80 ms frame of `x`."""
    frames = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
    return frames[np.argmax(np.sqrt(np.mean(frames**2, axis=1)))]


def test_live_conversation(virtual_audio, tiny_model, tmp_path):
    speech = speech_wav(tmp_path / "speech.wav", "Hello Moshi. Can you hear me? Tell me about the weather today.")
    pipeline = load_pipeline(tiny_model)
    events = []
    recorder = WavRecorder(tmp_path / "conversation.wav", stereo=True)
    transcript = TranscriptWriter(tmp_path / "transcript.txt")
    engine = Engine(pipeline, on_event=events.append, recorder=recorder, transcript=transcript, max_backlog=2)
    with virtual_audio.record(tmp_path / "speaker.wav") as speaker:
        with engine:
            time.sleep(0.3)
            virtual_audio.play(speech).wait()
            time.sleep(0.3)
        time.sleep(0.3)  # the server's own latency before the last block reaches the recorder
    stats = engine.stats()

    # Callbacks every 20 ms (a quarter frame), in and out (the output stream starts with back-to-back prefill calls).
    intervals_in = stats.intervals_ms(stats.input_times)
    intervals_out = stats.intervals_ms(stats.output_times)[4:]
    assert len(intervals_in) > 40
    # The median is the device's cadence. Single callbacks may run late by a scheduling delay on a loaded 2-core
    # machine (seen: 940 ms at a load of 15), and a starved audio thread may miss a block (ALSA "underrun occurred",
    # seen at a load of 5, which stretched the mean to 83.5 ms): that is the system's doing, so the mean is held to
    # 10 % and missed blocks to a few. What our callbacks control, their own CPU time, is bounded tightly below.
    for intervals in (intervals_in, intervals_out):
        assert abs(np.median(intervals) - BLOCK_MS) < 2 and abs(intervals.mean() - BLOCK_MS) < BLOCK_MS / 10, intervals
        assert np.sum(intervals > 200) <= max(1, len(intervals) // 20), intervals
    assert stats.callback_max_ms < 10
    assert stats.input_overflows + stats.output_underflows <= max(2, len(intervals_in) // 20)

    # Every frame received was processed or counted as dropped; one event per processed frame, in order.
    assert stats.received == stats.processed + stats.dropped
    assert [e.index for e in events] == list(range(stats.processed))
    assert all(e.backlog <= 2 for e in events)
    assert [e.dropped for e in events] == sorted(e.dropped for e in events)
    # What a frame cost the loop is its slowest stage (the stages overlap), not their sum: the sum passed 90 ms on a
    # busy machine while the loop kept up and nothing was dropped.
    per_frame = np.mean([e.frame_ms for e in events])
    if per_frame > 100:  # slower than real time: the lag policy must have acted on both sides
        assert stats.dropped > 0 and stats.underruns > 0

    # Moshi speaks from its second step on: the first block reaches the speaker after the first two frames are
    # processed, plus at most one block of waiting on each side.
    first_two = events[0].total_ms + events[1].total_ms
    assert events[0].decode_ms == 0 and events[1].output_level > 0
    assert stats.first_output_frames is not None
    assert stats.first_output_frames <= 2 + math.ceil(first_two / 80) + 1, (stats.first_output_frames, first_two)

    # Text events arrive, and the transcript hook got exactly their text.
    assert all(isinstance(e.text_token, int) for e in events)
    pieces = [e.text for e in events if e.text]
    assert pieces
    assert (tmp_path / "transcript.txt").read_text() == "".join(pieces).lstrip() + "\n"

    # Sample-exact paths: the spoken WAV reached the model, Moshi's voice reached the speaker.
    conversation, rate = soundfile.read(str(tmp_path / "conversation.wav"), dtype="float32")
    assert rate == 24000 and conversation.shape == (stats.processed * FRAME, 2)
    spoken, _ = soundfile.read(str(speech), dtype="float32")
    heard = loudest_frame(conversation[:, 0])
    assert np.sqrt(np.mean(heard**2)) > 0.05 and best_match(heard, spoken) > 0.99
    played, _ = soundfile.read(str(speaker), dtype="float32")
    assert stats.played + stats.unplayed + stats.output_dropped == (stats.processed - 1) * BLOCKS_PER_FRAME
    assert stats.unplayed == 0  # stopping played out what Moshi had said
    # Every frame handed to the speaker is heard intact, but the last (PortAudio's buffer, its latency: two blocks
    # here, may be cut short when the stream closes), and those dropped from its queue (a surplus left
    # by a hiccup is trimmed to keep the latency low: whole blocks, never heard).
    said = conversation[:, 1].reshape(-1, FRAME)[1 : (stats.played + stats.output_dropped) // BLOCKS_PER_FRAME]
    assert len(said) > 5 and np.sqrt(np.mean(said**2)) > 0.05
    matches = [round(best_match(frame, played), 2) for frame in said]
    assert sum(m < 1.0 for m in matches) <= stats.output_dropped, (matches, stats.output_dropped)


def test_device_at_its_own_rate_is_resampled(virtual_audio, tiny_model, tmp_path):
    pipeline = load_pipeline(tiny_model)
    with virtual_audio.record(tmp_path / "speaker.wav") as speaker:
        with Engine(pipeline, input_device="pulse", output_device="pulse", samplerate=44100) as engine:
            time.sleep(2.0)
    stats = engine.stats()
    assert stats.input.samplerate == stats.output.samplerate == 44100 and stats.input.blocksize == 882
    intervals = stats.intervals_ms(stats.input_times)
    assert abs(np.median(intervals) - 20) < 2 and abs(intervals.mean() - 20) < 2  # (see test_live_conversation)
    # The resampler holds back a few milliseconds, so at most one frame's worth is still inside it.
    assert 0 <= stats.received - (stats.processed + stats.dropped) <= 1
    assert stats.first_output_frames is not None
    played, rate = soundfile.read(str(speaker), dtype="float32")
    assert rate == 24000 and np.sqrt(np.mean(played**2)) > 0.01  # Moshi's voice came out, resampled twice


def test_inference_error_stops_and_is_raised_by_stop(virtual_audio, tiny_model, tmp_path):
    def failing_ui(event):
        if event.index == 2:
            raise RuntimeError("UI went away")

    transcript = TranscriptWriter(tmp_path / "t.txt")
    engine = Engine(load_pipeline(tiny_model), on_event=failing_ui, transcript=transcript)
    engine.start()
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.running
    with pytest.raises(RuntimeError, match="UI went away"):
        engine.stop()
    assert (tmp_path / "t.txt").read_text().endswith("\n")  # closed by stop()
    engine.stop()  # a second stop is harmless


def test_unknown_device_fails_before_anything_opens(virtual_audio, tiny_model):
    engine = Engine(load_pipeline(tiny_model), input_device="no such microphone")
    with pytest.raises(MoshiError, match="no audio input device matches 'no such microphone'"):
        engine.start()
    assert not engine.running


def test_all_mlx_work_on_the_inference_thread(virtual_audio, tiny_model, monkeypatch):
    """Warm-up, compilation and every step run on one thread: on Metal, MLX streams belong to their thread.
    The model's memory is wired (mlx-lm's `wired_limit`, a no-op off Metal) on that thread for the conversation."""
    import contextlib

    from moshi_mlx.model import mlx_lm_parts

    pipeline = load_pipeline(tiny_model)
    threads = []

    @contextlib.contextmanager
    def wired(model):
        assert model is pipeline.gen.lm
        threads.append(("wired", threading.current_thread().name))
        yield
        threads.append(("unwired", threading.current_thread().name))

    monkeypatch.setattr(mlx_lm_parts, "wired_limit", wired)
    for name in ("submit", "collect", "reset"):
        method = getattr(pipeline.gen, name)

        def recorded(*args, _method=method, _name=name, **kwargs):
            threads.append((_name, threading.current_thread().name))
            return _method(*args, **kwargs)

        setattr(pipeline.gen, name, recorded)
    with Engine(pipeline, warmup_frames=2) as engine:
        time.sleep(1.0)
    stats = engine.stats()
    names = [name for name, _ in threads]
    assert names[:6] == ["wired", "submit", "collect", "submit", "collect", "reset"]
    assert names[-1] == "unwired" and stats.processed > 0
    assert names.count("submit") == names.count("collect") == 2 + stats.processed
    assert {thread for _, thread in threads} == {"moshi-inference"}


def test_warmup_error_is_raised_by_start_before_devices_open(virtual_audio, tiny_model):
    pipeline = load_pipeline(tiny_model)

    def broken(frames):
        raise RuntimeError("no GPU memory left")

    pipeline.warmup = broken
    engine = Engine(pipeline)
    with pytest.raises(RuntimeError, match="no GPU memory left"):
        engine.start()
    assert not engine.running and engine.devices.input_stream is None and engine.devices.output_stream is None
