"""Stand-ins for Mimi, Moshi and the sound card, to measure the live loop's latency exactly and fast.

`LabelCodec` is a lossless codec: each frame's codes label it in a table, so decoding gives the very frame back.
`EchoLmGen` answers the user with the user's own codes, placed in Moshi's audio stream with the model's delays.
Together, Moshi's voice is the user's voice, late by exactly the loop's latency. `SimulatedDevices` are sound
devices without a sound card: two timer threads call `AudioDevices`' callbacks every block on a steady clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from types import MappingProxyType, SimpleNamespace
from typing import Any

import mlx.nn as nn
import numpy as np

from ..codec import CARDINALITY, FRAME_S, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE
from ..model.config import LmConfig
from ..model.generate import PendingStep, StepOutput
from ..stream.audio_io import BLOCKS_PER_FRAME, StreamSettings
from ..stream.devices import AudioDevices

TEXT_PADDING = 3  # the 7B's text padding token: Moshi says nothing


def _wait_until(deadline: float) -> None:
    if (left := deadline - time.monotonic()) > 0:
        time.sleep(left)


class LabelCodec:
    """A lossless codec for latency tests (implements `Codec`): `decode(encode(frame))` is `frame`, bit for bit.

    Frame n is kept in a ring of `slots` entries; its codes are n in base 2048 (codebooks 0 and 1) and check values
    derived from them (codebooks 2..7), so codes mixed from two frames, or of a frame overwritten, decode to
    silence. `encode_s` / `decode_s` make each call take that long (sleeping), as Mimi's compute would;
    `stall(stage, seconds)` makes the next call of that stage take `seconds`.
    """

    sample_rate, frame_size = SAMPLE_RATE, FRAME_SIZE
    num_codebooks, cardinality = NUM_CODEBOOKS, CARDINALITY
    runs_off_thread = True  # no MLX: encode and decode may run on worker threads

    def __init__(self, encode_s: float = 0.0, decode_s: float = 0.0, slots: int = 2048):
        self.seconds = {"encode": encode_s, "decode": decode_s}
        self.slots = slots
        self._stalls: dict[str, float] = {}
        self._lock = threading.Lock()  # encode and decode run on two threads
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._frames: list[np.ndarray | None] = [None] * self.slots
            self._labels = [-1] * self.slots
            self._count = 0

    def stall(self, stage: str, seconds: float) -> None:
        """The next `stage` ("encode" or "decode") call takes `seconds` instead of its usual time."""
        if stage not in self.seconds:
            raise ValueError(f"stage must be 'encode' or 'decode', got {stage!r}")
        self._stalls[stage] = seconds

    def _take_time(self, stage: str, start: float) -> None:
        _wait_until(start + self._stalls.pop(stage, self.seconds[stage]))

    @staticmethod
    def label_codes(n: int) -> np.ndarray:
        """The codes of frame n."""
        low, high = n % CARDINALITY, (n // CARDINALITY) % CARDINALITY
        checks = [(low * (2 * k + 1) + high * k + 101 * k) % CARDINALITY for k in range(2, NUM_CODEBOOKS)]
        return np.array([low, high, *checks], np.int64)

    def encode(self, frame: np.ndarray) -> np.ndarray:
        start = time.monotonic()
        pcm = np.array(frame, dtype=np.float32).reshape(-1)
        if pcm.shape[0] != self.frame_size:
            raise ValueError(f"expected a frame of {self.frame_size} samples, got shape {np.shape(frame)}")
        with self._lock:
            label = self._count % CARDINALITY**2
            self._count += 1
            self._frames[label % self.slots], self._labels[label % self.slots] = pcm, label
        self._take_time("encode", start)
        return self.label_codes(label)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        start = time.monotonic()
        values = np.asarray(codes, dtype=np.int64).reshape(-1)
        if values.shape[0] != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} codes, got shape {np.shape(codes)}")
        n = int(values[0]) + CARDINALITY * int(values[1])
        with self._lock:
            frame = self._frames[n % self.slots]
            known = self._labels[n % self.slots] == n and np.array_equal(values, self.label_codes(n))
        self._take_time("decode", start)
        return frame.copy() if known and frame is not None else np.zeros(self.frame_size, np.float32)

    def notices(self) -> list[str]:
        return []

    def close(self) -> None:
        self.reset()


def echo_config() -> LmConfig:
    """The 7B's streams and delays (16 audio streams, 8 of them Moshi's, cards 2048) with tiny dimensions."""
    return LmConfig(dim=16, num_heads=2, num_layers=1, depformer_dim=16, depformer_num_heads=2,
                    depformer_num_layers=1, depformer_dim_feedforward=32, context=8)


class _NoWeights(nn.Module):
    """`EchoLmGen.lm`: a module without parameters (for `mlx_lm.generate.wired_limit`), with `Lm`'s attributes."""

    def __init__(self, config: LmConfig):
        super().__init__()
        self.config = config
        self.quantization: MappingProxyType[str, Any] = MappingProxyType({})


class EchoLmGen:
    """A stand-in for `LmGen` whose Moshi repeats the user: step t's audio frame is the user's codes of frame t-1.

    Moshi's stream k (delay d_k) sampled at step t takes the user's codebook k of frame t - d_k, so the frame that
    `collect` completes at step t (`[a0(t-1), a1..a7(t)]`) is the user's frame t - max_delay, whole (the real
    model sees start tokens instead of the user's delayed codebooks of frame 0; the echo keeps them). The text is
    padding at every step. `step_s` is the LM's compute per step: a step submitted while another computes starts
    when that one ends, and `collect` waits for its end. No MLX anywhere (any thread may call it).
    """

    def __init__(self, config: LmConfig | None = None, step_s: float = 0.0, seed: int | None = None):
        self.cfg = config or echo_config()
        if self.cfg.n_q - self.cfg.dep_q != self.cfg.dep_q:
            raise ValueError("the echo needs as many user streams as Moshi's")
        self.lm = _NoWeights(self.cfg)
        self.num_user = self.cfg.n_q - self.cfg.dep_q
        self.step_s, self.seed = step_s, seed
        self.cache: list[Any] = []  # no KV cache
        self._stall_s = 0.0
        self.reset()

    def reset(self) -> None:
        """Start a new conversation."""
        keep = self.cfg.max_delay + 1
        self.step_index = 0
        self._collected = 0
        self._user: deque[np.ndarray] = deque(maxlen=keep)  # the user's last frames, newest last
        self._generated: deque[np.ndarray] = deque(maxlen=keep)  # Moshi's tokens of the last collected steps
        self._done: deque[float] = deque()  # when each submitted, uncollected step ends
        self._free_at = 0.0

    def stall(self, seconds: float) -> None:
        """The next submitted step computes `seconds` longer."""
        self._stall_s = seconds

    def submit(self, user_codes: Any) -> PendingStep:
        """Take the user's frame and "sample" Moshi's tokens of this step (kept in the returned step)."""
        cfg, t = self.cfg, self.step_index
        user = np.asarray(user_codes, dtype=np.int64).reshape(-1)
        if user.shape[0] != self.num_user or user.min() < 0 or user.max() >= cfg.card:
            raise ValueError(f"expected {self.num_user} user codes in [0, {cfg.card}), got {user.tolist()}")
        self._user.append(user)
        tokens = [TEXT_PADDING]
        for k, d in enumerate(cfg.delays[1 : cfg.dep_q + 1]):
            tokens.append(int(self._user[-1 - d][k]) if t >= d else cfg.card)
        start = max(time.monotonic(), self._free_at)
        self._free_at = start + self.step_s + self._stall_s
        self._stall_s = 0.0
        self._done.append(self._free_at)
        self.step_index += 1
        return PendingStep(t, np.array(tokens, np.int64))  # type: ignore[arg-type]  # numpy, not on a device

    def collect(self, pending: PendingStep) -> StepOutput:
        """Wait for the step's end; Moshi's audio frame completed at this step, as `LmGen.collect` gives it."""
        if pending.index != self._collected:
            raise RuntimeError(f"steps are collected in order: expected step {self._collected}, got {pending.index}")
        _wait_until(self._done.popleft())
        cfg = self.cfg
        self._generated.append(np.asarray(pending.generated))
        self._collected += 1
        audio = None
        if self._collected > cfg.max_delay:
            audio = np.array([self._generated[-1 - (cfg.max_delay - d)][k]
                              for k, d in enumerate(cfg.delays[1 : cfg.dep_q + 1], start=1)], np.int64)
        return StepOutput(text_token=TEXT_PADDING, audio_codes=audio)

    def step(self, user_codes: Any) -> StepOutput:
        return self.collect(self.submit(user_codes))


class _TimerStream:
    """A PortAudio stream's stand-in: calls `tick(n, due)` for block n, due at `start + n * block_s` (late: at once)."""

    def __init__(self, tick: Callable[[int, float], None], block_s: float, latency: float, start: float):
        self.tick, self.block_s, self.latency, self.start_at = tick, block_s, latency, start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-audio", daemon=True)
        self.start = self._thread.start

    @property
    def active(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(max(0.0, self.start_at + n * self.block_s - time.monotonic())):
            self.tick(n, self.start_at + n * self.block_s)
            n += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    close = stop


_STATUS = SimpleNamespace(input_overflow=False, output_underflow=False)  # PortAudio's callback flags


def _time_info(adc: float = 0.0, dac: float = 0.0) -> SimpleNamespace:
    """PortAudio's callback times: now, and the hardware times of the block's first sample (0 when not its kind)."""
    return SimpleNamespace(currentTime=time.monotonic(), inputBufferAdcTime=adc, outputBufferDacTime=dac)


class SimulatedDevices(AudioDevices):
    """A microphone playing `signal` (mono, at `samplerate`; then silence, or again when `loop`) and a recorded
    speaker, as blocks of `blocksize` samples (20 ms by default, as the real devices) on a steady clock.

    Block n of each stream is due at `t0 + n * block` (`time.monotonic()`); its callback gets `time_info` with
    `currentTime` the time of the call, and the stream's hardware times: `inputBufferAdcTime` = due time -
    `input_latency_s` (when the block's first sample was captured), `outputBufferDacTime` = due time +
    `output_latency_s` (when the first sample written will be heard). Every output block is kept in `heard` as
    `(dac_time, samples)`: the last `keep_blocks`, or all of them in the list given as `heard`.
    """

    def __init__(self, signal: np.ndarray | None = None, loop: bool = False, samplerate: int = SAMPLE_RATE,
                 blocksize: int | None = None, input_latency_s: float | None = None,
                 output_latency_s: float | None = None, heard: list | None = None, keep_blocks: int = 1 << 14):
        super().__init__(samplerate=samplerate)
        self.signal = np.zeros(0, np.float32) if signal is None else np.asarray(signal, np.float32).reshape(-1)
        self.loop, self.blocksize = loop, blocksize or round(samplerate * FRAME_S) // BLOCKS_PER_FRAME
        self.block_s = self.blocksize / samplerate
        # A block's first sample is captured at least a block before its callback, and played after it.
        self.input_latency_s = self.block_s if input_latency_s is None else input_latency_s
        self.output_latency_s = self.block_s if output_latency_s is None else output_latency_s
        if self.input_latency_s < self.block_s or self.output_latency_s < 0:
            raise ValueError("a device's input latency is at least a block (its first sample is a block old when "
                             "the callback gets it), its output latency at least 0")
        self.heard: Any = heard if heard is not None else deque(maxlen=keep_blocks)
        self.signal_adc_time: float | None = None  # when the signal's first sample was captured

    def choose(self) -> None:
        settings = StreamSettings(None, self.samplerate, 1, self.blocksize)
        self._use(settings, settings)

    def open(self) -> None:
        """Start the speaker's and the microphone's clocks, one block from now."""
        t0 = time.monotonic() + self.block_s
        self.output_stream = _TimerStream(self._output_block, self.block_s, self.output_latency_s, t0)
        self.input_stream = _TimerStream(self._input_block, self.block_s, self.input_latency_s, t0)
        for stream in (self.output_stream, self.input_stream):
            stream.start()
        self._note_latencies()

    def _input_block(self, n: int, due: float) -> None:
        adc = due - self.input_latency_s
        if n == 0:
            self.signal_adc_time = adc
        size, block = len(self.signal), np.zeros(self.blocksize, np.float32)
        if size:
            positions = np.arange(n * self.blocksize, (n + 1) * self.blocksize)
            inside = positions < size if not self.loop else np.ones(self.blocksize, bool)
            block[inside] = self.signal[positions[inside] % size]
        self._on_input(block[:, None], self.blocksize, _time_info(adc=adc), _STATUS)

    def _output_block(self, n: int, due: float) -> None:
        outdata = np.zeros((self.blocksize, 1), np.float32)
        dac = due + self.output_latency_s
        self._on_output(outdata, self.blocksize, _time_info(dac=dac), _STATUS)
        self.heard.append((dac, outdata[:, 0].copy()))

    def speaker_delay_s(self, max_delay_s: float = 2.0) -> float:
        """The delay from the microphone's capture of the signal to the speaker's playing it, by cross-correlation
        (the ground truth of an echo's latency): the lag that best aligns what was played with the signal."""
        if self.signal_adc_time is None or not self.heard:
            raise RuntimeError("nothing was captured and played yet")
        heard_t0, rate = self.heard[0][0], self.samplerate
        heard = np.concatenate([samples for _, samples in self.heard])
        # Sample j of `heard` is played at heard_t0 + j / rate; the signal's sample i was captured at
        # signal_adc_time + i / rate: a delay of `lag` samples puts source sample i at heard index i + shift.
        n = 2 * (len(heard) + len(self.signal))
        correlation = np.fft.irfft(np.fft.rfft(heard, n) * np.conj(np.fft.rfft(self.signal, n)), n)
        lags = np.arange(round(max_delay_s * rate) + 1)
        shifts = lags - round((heard_t0 - self.signal_adc_time) * rate)
        scores = np.where(np.abs(shifts) < n // 2, correlation[shifts % n], -np.inf)
        return float(lags[int(np.argmax(scores))] / rate)
