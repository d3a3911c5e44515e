"""DSM TTS generation: Kyutai's `TTSModel.generate` (moshi 0.2.13) on our LM, one host synchronisation a frame.

Step t feeds the text token the state machine chose at t-1 (start token at t = 0) and the audio tokens of t-1
(start token while t <= the stream's delay); the model's text logits (with CFG and the padding bonus) give a
token; the state machine's two possible answers are prepared on the host beforehand and the device picks one, so
the depth transformer runs on it without waiting; the audio tokens are zero (-1) until the audio delay has
passed. `collect` reads the step's tokens (the one wait), advances the state machine and returns the frame that
is complete: `[text, a0..]` aligned by the acoustic delays, as Kyutai's `LMGen.step` returns it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import mlx.core as mx
import numpy as np

from ..model.generate import LmGen, PendingStep
from ..model.lm import Lm
from .conditions import Conditions
from .prefix import forced_audio
from .script import Entry
from .state_machine import State, StateMachine
from .temporal import Temporal


@dataclass
class TtsFrame:
    """One step's result: `sampled` (the model's text token), `text` (the token fed back), and the complete
    frame `[text, a0, a1, ...]` (None for the first `max_delay` steps; -1 where audio is not generated yet)."""

    step: int
    sampled: int
    text: int
    frame: np.ndarray | None


@dataclass
class TtsResult:
    frames: list[np.ndarray]
    logged_text_tokens: list[tuple[int, int]]
    end_step: int | None
    consumption_times: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)


class TtsGen(LmGen):
    """Generation for a DSM TTS model (`dep_q == n_q`: every stream is generated).

    `cfg_coef != 1` runs classifier-free guidance as Kyutai does: the conditioned and unconditioned items in
    one batch of two (give `Conditions` prepared for both); `cfg_is_no_text` feeds the unconditioned item no
    text and takes the text logits of the conditioned one alone. A voice prefix (`start`'s `prefix`, see
    `prefix.py`) is forced in first; `cfg_is_no_prefix` hides it from the unconditioned item.
    """

    def __init__(
        self,
        lm: Lm,
        machine: StateMachine,
        delay_steps: int,
        temp: float = 0.6,
        top_k: int = 250,
        top_k_text: int = 25,
        cfg_coef: float = 1.0,
        cfg_is_no_text: bool = True,
        cfg_is_no_prefix: bool = True,
        padding_bonus: float = 0.0,
        n_q: int | None = None,
        seed: int | None = None,
        compile: bool = True,
    ):
        self.machine = machine
        # Codebooks generated (Kyutai's `n_q`): fewer than the model's leave the others fed zero tokens.
        self.n_gen = lm.config.dep_q if n_q is None else n_q
        if not 1 <= self.n_gen <= lm.config.dep_q:
            raise ValueError(f"n_q {n_q}: this model generates 1 to {lm.config.dep_q} codebooks")
        self.delay_steps = delay_steps
        self.cfg_coef = cfg_coef
        self.cfg_is_no_text = cfg_is_no_text
        self.cfg_is_no_prefix = cfg_is_no_prefix
        self.prefix: np.ndarray | None = None
        self.padding_bonus = padding_bonus
        self.state: State | None = None
        self.conditions = Conditions(None, None)
        self.keep_logits = False  # keep what each token was sampled from, in `logits` (checks, not speed)
        self.logits: list[tuple[np.ndarray, np.ndarray | None]] = []
        super().__init__(lm, temp=temp, temp_text=temp, top_k=top_k, top_k_text=top_k_text, seed=seed,
                         compile=False)
        # The depth transformer's steps have fixed shapes: one compiled function (the random state in and out).
        self._temporal = Temporal(lm, compile)
        self._depth_fn = self._depth
        if compile:
            self._depth_fn = partial(mx.compile, inputs=[lm.state, mx.random.state],
                                     outputs=[mx.random.state])(self._depth)

    @property
    def batch(self) -> int:
        return 2 if self.cfg_coef != 1.0 else 1

    @property
    def prefix_steps(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]

    def start(self, entries: list[Entry], conditions: Conditions, prefix: np.ndarray | None = None) -> None:
        """Begin a generation of `entries` under `conditions` (see `conditions.prepare`), after the voice
        `prefix` (audio codes `[n_q, P]`) if given."""
        self.reset()
        self.prefix = prefix
        self.state = self.machine.new_state(entries)
        self.conditions = conditions
        self.logged: list[tuple[int, int]] = []
        self.logits = []

    def reset(self) -> None:
        super().reset()
        self._frames: deque[np.ndarray] = deque(maxlen=self.cfg.max_delay + 1)  # fed tokens, newest last
        self._step_logits: tuple[mx.array, mx.array | None] | None = None

    def _input_tokens(self) -> mx.array:
        """The `[B, K, 1]` tokens of this step; with CFG and `cfg_is_no_text`, the twin's text is zero."""
        cfg, t = self.cfg, self.step_index
        starts = [cfg.text_card] + [cfg.card] * cfg.n_q
        zero = self.machine.token_ids.zero
        row = [starts[k] if t <= d else int(self._frames[-1][k]) if k <= self.n_gen else zero
               for k, d in enumerate(cfg.delays)]
        rows = [row]
        if self.batch == 2:
            twin = list(row)
            if self.cfg_is_no_text and t > cfg.delays[0]:
                twin[0] = zero
            if self.prefix is not None and self.cfg_is_no_prefix:
                masked_until = self.prefix_steps + self.delay_steps
                twin = [zero if d < t <= d + masked_until else x for x, d in zip(twin, cfg.delays, strict=True)]
            rows.append(twin)
        return mx.array(rows, dtype=mx.int32)[..., None]

    def _cfg(self, logits: mx.array) -> mx.array:
        if self.batch == 1:
            return logits
        cond, null = logits[:1], logits[1:]
        return null + (cond - null) * self.cfg_coef

    def submit(self, user_codes: Any = None) -> PendingStep:
        """Build this step and start it on the device; `collect` it before submitting the next one."""
        if self._collected != self.step_index:
            raise RuntimeError("collect each TTS step before submitting the next")
        t, ids = self.step_index, self.machine.token_ids
        in_prefix = t < self.prefix_steps  # the text is the zero token, the state machine waits
        pad_out, word_out = (ids.zero, ids.zero) if in_prefix else self.machine.branches(t, self.state)
        hidden, text_logits = self._temporal(self._input_tokens(), self.cache, self.conditions.sum,
                                             self.conditions.cross_kv)
        text_logits = text_logits[:, -1].astype(mx.float32)
        text_logits = text_logits[:1] if self.cfg_is_no_text or self.batch == 1 else self._cfg(text_logits)
        if self.padding_bonus:
            bonus = mx.zeros((text_logits.shape[-1],)).at[ids.pad].add(self.padding_bonus)
            text_logits = text_logits + bonus
        sampled = self.sample_text(text_logits).astype(mx.int32).reshape(1)
        text = mx.where(sampled == ids.new_word, word_out, pad_out).astype(mx.int32)
        audio_logits = None
        if t < self.delay_steps:
            audio = mx.full((self.n_gen,), ids.zero, dtype=mx.int32)
        else:
            audio, audio_logits = self._depth_fn(hidden, text)
        # Streams whose delay (plus the audio delay) has not passed yet carry zero tokens.
        silent = [t < d + self.delay_steps for d in self.cfg.delays[1: self.n_gen + 1]]
        if any(silent):
            audio = mx.where(mx.array(silent), ids.zero, audio)
        if self.prefix is not None:
            forced = forced_audio(self.prefix, t, self.cfg.delays[1:], self.delay_steps)[: self.n_gen]
            if (forced >= 0).any():
                audio = mx.where(mx.array(forced >= 0), mx.array(forced, dtype=mx.int32), audio)
        generated = mx.concatenate([sampled, text, audio])
        self._step_logits = (text_logits, audio_logits) if self.keep_logits else None
        mx.async_eval(generated, mx.random.state)
        return self._submitted(generated)

    def _depth(self, hidden: mx.array, text: mx.array) -> tuple[mx.array, mx.array]:
        """The depth transformer's `n_q` tokens, the text token first fed; CFG mixes the two items' logits."""
        caches = self.lm.make_depformer_cache()
        prev, tokens, all_logits = text, [], []
        for k in range(self.n_gen):
            step_in = mx.repeat(prev, self.batch).reshape(self.batch, 1)
            logits = self._cfg(self.lm.depformer.step(k, hidden, step_in, caches)[:, -1].astype(mx.float32))
            prev = self.sample_audio(logits).astype(mx.int32).reshape(1)
            tokens.append(prev)
            all_logits.append(logits[0])
        return mx.concatenate(tokens), mx.stack(all_logits)

    def collect(self, pending: PendingStep) -> TtsFrame:
        """Wait for the step, advance the state machine, return the step's frame (one host synchronisation)."""
        if pending.index != self._collected:
            raise RuntimeError(f"steps are collected in order: expected step {self._collected}")
        values = np.array(pending.generated)  # the wait
        sampled, text = int(values[0]), int(values[1])
        if pending.index < self.prefix_steps:
            expected = self.machine.token_ids.zero
        else:
            expected = self.machine.process(pending.index, self.state, sampled)
        if expected != text:
            raise RuntimeError(f"state machine and device disagree at step {pending.index}: {expected} != {text}")
        self.logged.append((sampled, text))
        if self._step_logits is not None:
            text_logits, audio_logits = self._step_logits
            self.logits.append((np.array(text_logits[0]), None if audio_logits is None else np.array(audio_logits)))
        fed = values[1:].astype(np.int64)
        self._frames.append(fed)
        self._collected += 1
        cfg, frame = self.cfg, None
        if self._collected > cfg.max_delay:
            frame = np.array([self._frames[-1 - (cfg.max_delay - d)][k]
                              for k, d in enumerate(cfg.delays[: self.n_gen + 1])], dtype=np.int64)
        return TtsFrame(pending.index, sampled, text, frame)

    def step(self, user_codes: Any = None) -> TtsFrame:
        return self.collect(self.submit())

    def finished(self, final_padding: int) -> bool:
        """Kyutai's stop rule: the end was reached and the audio delay and final padding have passed."""
        end = self.state.end_step
        return end is not None and self.step_index >= end + self.delay_steps + final_padding

    def generate(self, entries: list[Entry], conditions: Conditions, final_padding: int = 4,
                 max_steps: int = 30000, prefix: np.ndarray | None = None) -> TtsResult:
        """Run to the end; every complete frame, as Kyutai's `TTSModel.generate` returns them."""
        self.start(entries, conditions, prefix)
        frames = []
        for _ in range(max_steps):
            if self.finished(final_padding):
                break
            out = self.step()
            if out.frame is not None:
                frames.append(out.frame)
        s = self.state
        return TtsResult(frames, self.logged, s.end_step, s.consumption_times, s.transcript)
