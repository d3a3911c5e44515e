"""Stand-ins for a speech-to-text model and Mimi, for tests and soaks that need known words, known end-of-turn
probabilities, or speed: `ScriptedSttGen` says the tokens it is given, `CheapCodec` encodes a frame at no cost."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..codec import CARDINALITY, FRAME_SIZE, SAMPLE_RATE
from ..model.config import LmConfig
from ..model.generate import PendingStep, StepOutput
from .stand_ins import _NoWeights, _wait_until

PADDING = 3


class ScriptedSttGen:
    """A stand-in for `SttGen`: frame t's text token is `tokens[t]` (padding past the end) and its end-of-turn
    probability (extra head 2, first class) `turn_end[t]` (0 past the end; no heads when None). `step_s` is the
    compute of a step. No MLX: any thread may call it."""

    def __init__(self, config: LmConfig, tokens: Sequence[int], turn_end: Sequence[float] | None = None,
                 step_s: float = 0.0):
        self.cfg = config
        self.lm = _NoWeights(config)
        self.num_user = config.n_q - config.dep_q
        self.tokens, self.turn_end, self.step_s = list(tokens), turn_end, step_s
        self.cache: list[Any] = []
        self.reset()

    def reset(self) -> None:
        self.step_index = 0
        self._collected = 0
        self._free_at = 0.0

    def submit(self, user_codes: Any) -> PendingStep:
        codes = np.asarray(user_codes).reshape(-1)
        if codes.shape[0] != self.num_user:
            raise ValueError(f"expected {self.num_user} codes, got {codes.shape[0]}")
        t = self.step_index
        self.step_index += 1
        self._free_at = max(time.monotonic(), self._free_at) + self.step_s
        token = self.tokens[t] if t < len(self.tokens) else PADDING
        return PendingStep(t, np.array([token, self._free_at]))  # type: ignore[arg-type]  # numpy, not a device

    def collect(self, pending: PendingStep) -> StepOutput:
        if pending.index != self._collected:
            raise RuntimeError(f"steps are collected in order: expected {self._collected}, got {pending.index}")
        token, done = np.asarray(pending.generated)
        _wait_until(float(done))
        self._collected += 1
        heads = None
        if self.turn_end is not None:
            t = pending.index
            p = self.turn_end[t] if t < len(self.turn_end) else 0.0
            heads = np.zeros((max(3, self.cfg.extra_heads_num_heads), 6), np.float32)
            heads[:, 1] = 1.0
            heads[2] = [p, 1.0 - p, 0, 0, 0, 0]
        return StepOutput(text_token=int(token), audio_codes=None, extra_heads=heads)

    def step(self, user_codes: Any) -> StepOutput:
        return self.collect(self.submit(user_codes))


class CheapCodec:
    """A codec stand-in (implements `Codec`) at no cost: a frame's codes are some of its samples, scaled to the
    codebook (so that a model hears different frames differently); it decodes nothing."""

    sample_rate, frame_size, cardinality = SAMPLE_RATE, FRAME_SIZE, CARDINALITY
    runs_off_thread = True

    def __init__(self, num_codebooks: int = 32):
        self.num_codebooks = num_codebooks

    def encode(self, frame: np.ndarray) -> np.ndarray:
        samples = np.asarray(frame, np.float32).reshape(-1)
        if samples.shape[0] != self.frame_size:
            raise ValueError(f"expected a frame of {self.frame_size} samples, got shape {np.shape(frame)}")
        picked = samples[:: self.frame_size // self.num_codebooks][: self.num_codebooks]
        return (np.clip((picked + 1) / 2, 0, 1) * (self.cardinality - 1)).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.zeros(self.frame_size, np.float32)

    def notices(self) -> list[str]:
        return []

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
