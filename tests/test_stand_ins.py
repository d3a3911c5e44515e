"""The latency stand-ins: a lossless labelling codec, an LM that echoes the user with Moshi's delays, and sound
devices on a timer."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
from mlx_lm.generate import wired_limit

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE, Pipeline
from moshi_mlx.devtools.stand_ins import EchoLmGen, LabelCodec, SimulatedDevices
from moshi_mlx.stream.filemode import run_frames


def noise(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, frames * FRAME_SIZE).astype(np.float32)


def test_label_codec_round_trip_is_exact():
    codec = LabelCodec(slots=16)
    frames = noise(40).reshape(40, FRAME_SIZE)
    codes = [codec.encode(frame) for frame in frames]
    assert all(c.shape == (8,) and c.dtype == np.int64 and 0 <= c.min() and c.max() < 2048 for c in codes)
    assert len({tuple(c) for c in codes}) == 40
    for frame, c in zip(frames[-16:], codes[-16:], strict=True):  # the ring keeps the last 16
        assert np.array_equal(codec.decode(c), frame)
    silence = np.zeros(FRAME_SIZE, np.float32)
    assert np.array_equal(codec.decode(codes[0]), silence)  # overwritten in the ring
    mixed = np.concatenate([codes[-2][:1], codes[-1][1:]])  # a0 of one frame, a1..a7 of the next
    assert np.array_equal(codec.decode(mixed), silence)
    assert np.array_equal(codec.decode(np.zeros(8, np.int64) + 7), silence)
    with pytest.raises(ValueError):
        codec.encode(frames[0][:100])
    codec.reset()
    assert np.array_equal(codec.decode(codes[-1]), silence)
    assert codec.notices() == [] and codec.runs_off_thread


def test_label_codec_compute_time_and_one_shot_stall():
    codec = LabelCodec(encode_s=0.02, decode_s=0.01)
    frame = noise(1)

    def timed(call, *args):
        start = time.monotonic()
        call(*args)
        return time.monotonic() - start

    assert 0.02 <= timed(codec.encode, frame) < 0.3
    codec.stall("decode", 0.3)
    codes = codec.encode(frame)
    assert timed(codec.decode, codes) >= 0.3
    assert 0.01 <= timed(codec.decode, codes) < 0.25  # the stall was for one call
    with pytest.raises(ValueError):
        codec.stall("lm", 1.0)


def test_echo_lm_gen_steps_follow_moshis_delays():
    gen = EchoLmGen()
    cfg = gen.cfg
    assert cfg.delays == [0, 0] + [1] * 7 + [0] + [1] * 7 and (cfg.n_q, cfg.dep_q, cfg.card) == (16, 8, 2048)
    with wired_limit(gen.lm):  # what the engine does with a real model
        pass
    user = np.random.default_rng(1).integers(0, 2048, (6, 8))
    outs = [gen.step(codes) for codes in user]
    assert outs[0].audio_codes is None and gen.step_index == 6
    for t in range(1, 6):  # step t completes Moshi's frame t-1: [a0(t-1), a1..a7(t)] = the user's frame t-1
        assert np.array_equal(outs[t].audio_codes, user[t - 1])
    assert all(out.text_token == 3 for out in outs)
    gen.reset()
    assert gen.step_index == 0 and gen.step(user[0]).audio_codes is None
    with pytest.raises(ValueError):
        gen.step(np.full(8, 2048))


def test_echo_lm_gen_computes_one_step_at_a_time():
    gen = EchoLmGen(step_s=0.05)
    start = time.monotonic()
    first, second = gen.submit(np.zeros(8)), gen.submit(np.ones(8))  # the second waits for the first
    gen.collect(first)
    assert time.monotonic() - start >= 0.05
    gen.collect(second)
    assert 0.1 <= time.monotonic() - start < 0.5
    with pytest.raises(RuntimeError):
        gen.collect(second)


@pytest.mark.parametrize("overlap", [True, False])
def test_pipeline_echo_is_the_input_one_frame_late(overlap):
    audio = noise(25, seed=2)
    pipeline = Pipeline(EchoLmGen(), LabelCodec())
    pipeline.warmup()
    result = run_frames(pipeline, audio, overlap=overlap)
    assert result.moshi is not None and len(result.moshi) == len(audio)
    assert np.all(result.moshi[:FRAME_SIZE] == 0)
    assert np.array_equal(result.moshi[FRAME_SIZE:], audio[:-FRAME_SIZE])  # sample-exact
    assert result.text_tokens == [3] * 25


class RecordingDevices(SimulatedDevices):
    """Keeps every callback's time_info, to check them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.infos: dict[str, list] = {"input": [], "output": []}

    def _on_input(self, indata, frames, time_info, status):
        self.infos["input"].append(time_info)
        super()._on_input(indata, frames, time_info, status)

    def _on_output(self, outdata, frames, time_info, status):
        self.infos["output"].append(time_info)
        super()._on_output(outdata, frames, time_info, status)


def test_simulated_devices_keep_a_steady_clock_and_loop_back():
    signal = noise(30, seed=3)
    devices = RecordingDevices(signal, output_latency_s=0.03)
    devices.choose()
    assert devices.stats.input.samplerate == SAMPLE_RATE and devices.stats.output.blocksize == FRAME_SIZE // 4

    def loop_back():  # what the engine does, without a model: each microphone block straight to the speaker
        while devices.input_stream is not None:
            try:
                block, _, _ = devices.mic.get(timeout=0.05)
            except queue.Empty:
                continue
            devices.play(block[:, 0])

    devices.open()
    worker = threading.Thread(target=loop_back, daemon=True)
    worker.start()
    time.sleep(3.0)
    devices.close_input()
    devices.play_out_and_close()
    worker.join()
    stats = devices.snapshot()

    adc = np.array([info.inputBufferAdcTime for info in devices.infos["input"]])
    dac = np.array([info.outputBufferDacTime for info in devices.infos["output"]])
    block = devices.block_s
    np.testing.assert_allclose(np.diff(adc), block, atol=1e-9)  # the hardware clock is exact
    np.testing.assert_allclose(np.diff(dac), block, atol=1e-9)
    # Each callback is called at its block's due time or after (late when the machine is busy), without drift.
    for times, due in ((stats.input_times, adc + block), (stats.output_times, dac - 0.03)):
        assert len(times) >= 4 * 33 and len(times) == len(due)
        assert abs(np.mean(np.diff(times)) - block) < 0.05 * block
        late = np.asarray(times) - due
        assert np.all(late > -1e-3) and np.median(late) < 0.03
    behind = np.array([info.currentTime for info in devices.infos["input"]]) - adc
    ahead = dac - np.array([info.currentTime for info in devices.infos["output"]])
    assert np.all(behind >= block) and np.median(behind) < block + 0.03  # default input latency: a block
    assert np.all(ahead <= 0.03) and np.median(ahead) > 0.0
    assert devices.signal_adc_time == adc[0]
    assert [t for t, _ in devices.heard] == list(dac)

    # The loopback's delay: input latency, whole blocks in the queues, output latency.
    delay = devices.speaker_delay_s()
    blocks = (delay - block - 0.03) / block
    assert abs(blocks - round(blocks)) < 1e-3 and 0 <= round(blocks) <= 12
    assert stats.played > 4 * 25 and stats.received == len(adc) // 4  # the microphone's blocks, as frames


def test_speaker_delay_by_correlation():
    signal = noise(10, seed=4)
    devices = SimulatedDevices(signal, heard=[])
    devices.signal_adc_time = 100.0
    shift = 4321  # samples between capture and playing
    heard = np.concatenate([np.zeros(shift - 960, np.float32), signal, np.zeros(FRAME_SIZE, np.float32)])
    heard = heard[: len(heard) // FRAME_SIZE * FRAME_SIZE]
    for i in range(0, len(heard), FRAME_SIZE):  # the first block played 40 ms after the signal's capture began
        devices.heard.append((100.04 + i / SAMPLE_RATE, heard[i : i + FRAME_SIZE]))
    assert devices.speaker_delay_s() == pytest.approx(shift / SAMPLE_RATE, abs=1e-9)
