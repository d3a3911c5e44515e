"""Streaming generation with the semantics of Kyutai's PyTorch `LMGen.step`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import numpy as np

from . import mlx_lm_parts
from .lm import Lm

Sampler = Callable[[mx.array], mx.array]


@dataclass
class StepOutput:
    """What one step hands out.

    `text_token` was sampled at this step; `audio_codes` is Moshi's audio frame completed at this step
    (`[a0(t-1), a1..a7(t)]` for the 7B delays), None until the acoustic delay has passed (always for STT).
    `extra_heads`: STT's voice-activity heads at this step (`SttGen`), `[num_heads, dim]` softmax, else None.
    """

    text_token: int
    audio_codes: np.ndarray | None
    text_logits: np.ndarray | None = None
    audio_logits: np.ndarray | None = None
    extra_heads: np.ndarray | None = None


@dataclass
class PendingStep:
    """A step sent to the device by `LmGen.submit`, its tokens not read yet: hand it to `LmGen.collect`."""

    index: int
    generated: mx.array  # [1 + dep_q]: the text token and the depth transformer's audio tokens


def _sampler(temp: float, top_k: int, vocab: int) -> Sampler:
    if temp <= 0:
        return lambda logits: mx.argmax(logits, axis=-1)
    # Kyutai's top-k keeps everything when k covers the vocabulary; mlx-lm wants 0 for that.
    return mlx_lm_parts.make_sampler(temp=temp, top_k=top_k if 0 < top_k < vocab else 0)


class LmGen:
    """Frame-by-frame generation: the user's codes in, Moshi's text and audio out.

    Step t feeds: the text and audio tokens sampled at t-1, the user's frame t on streams with delay 0 and
    frame t-1 on delayed ones; a stream gets its start token while t <= its delay.

    A step runs the temporal transformer as compiled pieces between the layers' attentions (whose key count
    grows), and the last layer's end, the text sampling and the depth transformer's eight steps as one compiled
    function. Moshi's own tokens are fed back without leaving the device, so `submit` can build step t+1 while
    step t computes; `collect` reads a step's tokens, the one host synchronisation of a step (`step` does both).
    """

    def __init__(
        self,
        lm: Lm,
        temp: float = 0.8,
        temp_text: float = 0.7,
        top_k: int = 250,
        top_k_text: int = 25,
        seed: int | None = None,
        compile: bool = True,
    ):
        self.lm = lm
        cfg = lm.config
        self.cfg = cfg
        self.sample_text = _sampler(temp_text, top_k_text, cfg.text_out_card)
        self.sample_audio = _sampler(temp, top_k, cfg.card)
        self.seed = seed
        self.num_user = cfg.n_q - cfg.dep_q
        self._compile = compile
        self._segments = self._make_segments(compile)
        self.reset()

    def _make_segments(self, compile: bool) -> list[Callable[..., Any]]:
        """Segment 0 sums the embeddings and starts layer 0; segment i ends layer i-1 and starts layer i; the
        last ends the last layer, samples the text token and runs the depth transformer."""
        layers = self.lm.transformer.layers
        segments: list[Callable[..., Any]] = [self._first_segment]
        segments += [partial(self._middle_segment, i) for i in range(1, len(layers))]
        segments.append(self._last_segment)
        if not compile:
            return segments
        # Each segment reads only its layers' weights, passed as implicit inputs (read afresh at each call, so
        # loading new weights is seen); the random state goes in and out of the sampling one.
        compiled = [mx.compile(segments[0], inputs=[layers[0].state])]
        compiled += [
            mx.compile(segment, inputs=[layers[i - 1].state, layers[i].state])
            for i, segment in enumerate(segments[1:-1], start=1)
        ]
        state = [self.lm.state, mx.random.state]
        compiled.append(partial(mx.compile, inputs=state, outputs=[mx.random.state])(segments[-1]))
        return compiled

    def reset(self) -> None:
        """Start a new conversation."""
        if self.seed is not None:
            mx.random.seed(self.seed)
        mx.eval(mx.random.state)
        cfg = self.cfg
        self.step_index = 0
        self.cache = self.lm.make_cache()
        self._starts = [cfg.text_card] + [cfg.card] * cfg.n_q
        # Moshi's tokens sampled at the last step, on the device ([1 + dep_q], perhaps still being computed); the
        # same for the last max_delay + 1 collected steps on the host, newest last; the user's last max_delay + 1
        # frames, each [n_q - dep_q].
        self._last: mx.array | None = None
        self._generated: deque[np.ndarray] = deque(maxlen=cfg.max_delay + 1)
        self._user: deque[np.ndarray] = deque(maxlen=cfg.max_delay + 1)
        self._collected = 0  # steps collected so far

    def _input_tokens(self) -> list[int | mx.array]:
        """The K tokens fed to the temporal transformer at this step: host ints, and Moshi's own tokens of the
        last step as one-element device arrays."""
        cfg, t = self.cfg, self.step_index
        dep = cfg.dep_q + 1
        last = mx.split(self._last, dep) if t > 0 else None  # one operation for the dep_q + 1 tokens
        tokens: list[int | mx.array] = []
        for k, d in enumerate(cfg.delays):
            if t <= d:
                tokens.append(self._starts[k])
            elif k < dep:
                tokens.append(last[k])
            else:
                tokens.append(int(self._user[-1 - d][k - dep]))
        return tokens

    # The pieces of a step (compiled in __init__).
    def _first_segment(self, rows: list[mx.array], offset: mx.array) -> tuple[mx.array, ...]:
        x = rows[0]
        for row in rows[1:]:
            x = x + row
        x = self.lm.transformer.add_positions(x, offset)
        return (x, *self.lm.transformer.layers[0].attention_inputs(x, offset))

    def _middle_segment(self, i: int, x: mx.array, attention: mx.array, offset: mx.array) -> tuple[mx.array, ...]:
        layers = self.lm.transformer.layers
        x = layers[i - 1].finish(x, attention)
        return (x, *layers[i].attention_inputs(x, offset))

    def _text_segment(self, x: mx.array, attention: mx.array) -> tuple[mx.array, mx.array]:
        x = self.lm.transformer.layers[-1].finish(x, attention)
        hidden = self.lm.out_norm(x)
        text_logits = self.lm.text_linear(hidden).astype(mx.float32)
        return hidden, self.sample_text(text_logits).astype(mx.int32).reshape(1)

    def _depth_segment(self, hidden: mx.array, text: mx.array) -> mx.array:
        return mx.concatenate([text, self._run_depth(hidden, text, masked=False)[0]])

    def _last_segment(self, x: mx.array, attention: mx.array) -> mx.array:
        return self._depth_segment(*self._text_segment(x, attention))

    def _generate(self, tokens: list[int | mx.array]) -> mx.array:
        """Moshi's text token and audio codes `[1 + dep_q]` sampled at this step (not evaluated)."""
        return self._segments[-1](*self._through_layers(tokens))

    def _through_layers(self, tokens: list[int | mx.array]) -> tuple[mx.array, mx.array]:
        """The temporal transformer up to the last layer's attention: its input and the attention's output."""
        rows = self.lm.embedding_rows(tokens)
        if not rows:  # every stream fed the zero token
            rows = [mx.zeros_like(self.lm.embedding_rows([0])[0])]
        offset = mx.array(self.cache[0].offset)
        x, q, k, v = self._segments[0](rows, offset)
        layers = self.lm.transformer.layers
        for i, (layer, cache) in enumerate(zip(layers, self.cache, strict=True)):
            attention = layer.self_attn.attend(q, k, v, cache)
            if i + 1 < len(layers):
                x, q, k, v = self._segments[i + 1](x, attention, offset)
        return x, attention

    def _run_depth(
        self, hidden: mx.array, text: mx.array, forced: np.ndarray | None = None, masked: bool = True
    ) -> tuple[mx.array, mx.array]:
        """Sample (or take from `forced`) the frame's codebooks in order; returns tokens and logits.

        `hidden` is `[1, 1, dim]` or one step's `[1, dim]`.
        """
        caches = self.lm.make_depformer_cache()
        prev, tokens, all_logits = text, [], []
        for k in range(self.cfg.dep_q):
            logits = self.lm.depformer.step(k, hidden, prev.reshape(hidden.shape[:-1]), caches, masked)
            if logits.ndim == 3:
                logits = logits[:, -1]
            logits = logits.astype(mx.float32)
            if forced is None:
                prev = self.sample_audio(logits).astype(mx.int32).reshape(1)
            else:
                prev = mx.array(forced[k : k + 1])
            tokens.append(prev)
            all_logits.append(logits)
        return mx.concatenate(tokens), mx.stack(all_logits)

    def step(self, user_codes: Any) -> StepOutput:
        """Run one 80 ms frame; `user_codes` are the user's `n_q - dep_q` Mimi codes of this frame."""
        return self.collect(self.submit(user_codes))

    def step_forced(self, user_codes: Any, text: int | None = None, audio: Any = None) -> StepOutput:
        """`step` through the uncompiled model, with the logits: teacher forcing, and the reference for checks.

        `text` / `audio` (Moshi's `dep_q` codes of this step) replace the sampled tokens; left out, they are
        sampled as `step` samples them. The output also holds the logits they were (or would have been) drawn from.
        """
        if self._collected != self.step_index:
            raise RuntimeError("collect the submitted steps before a forced step")
        tokens = self._take_user(user_codes)
        inputs = mx.concatenate([
            tok if isinstance(tok, mx.array) else mx.array([tok], dtype=mx.int32) for tok in tokens
        ]).reshape(1, -1, 1)
        hidden, text_logits = self.lm.temporal(inputs, self.cache)
        text_logits = text_logits[:, -1].astype(mx.float32)
        sampled = self.sample_text(text_logits) if text is None else mx.array([int(text)], dtype=mx.int32)
        sampled = sampled.astype(mx.int32).reshape(1)
        forced = None if audio is None else np.asarray(audio).reshape(-1).astype(np.int32)
        codes, audio_logits = self._run_depth(hidden, sampled, forced)
        return self._forced_output(sampled, codes, text_logits, audio_logits)

    def _forced_output(
        self, text: mx.array, codes: mx.array, text_logits: mx.array, audio_logits: mx.array
    ) -> StepOutput:
        """A forced step's tokens, collected, with the logits they were (or would have been) drawn from."""
        generated = mx.concatenate([text, codes])
        logits = [text_logits[0], audio_logits[:, 0]]
        mx.async_eval(generated, *logits, mx.random.state)
        out = self._collect(self._submitted(generated), logits)
        out.text_logits, out.audio_logits = np.array(logits[0]), np.array(logits[1])
        return out

    def submit(self, user_codes: Any) -> PendingStep:
        """Build this frame's step and start it on the device without waiting; `collect` gets its tokens.

        The next frame can be submitted before this one is collected: its graph is then built while this one
        computes. Steps are collected in the order they were submitted.
        """
        tokens = self._take_user(user_codes)
        generated = self._generate(tokens)
        # The random state goes with the tokens, so that no work is left pending behind them (MLX's GPU streams
        # belong to the thread that made them: submit and collect on the same thread).
        mx.async_eval(generated, mx.random.state)
        return self._submitted(generated)

    def collect(self, pending: PendingStep) -> StepOutput:
        """Wait for a submitted step and read its tokens: the one host synchronisation of a step."""
        return self._collect(pending)

    def _collect(self, pending: PendingStep, extra: list[mx.array] | tuple[()] = ()) -> StepOutput:
        if pending.index != self._collected:
            raise RuntimeError(f"steps are collected in order: expected step {self._collected}, got {pending.index}")
        cfg = self.cfg
        mx.eval(pending.generated, *extra)  # the wait
        self._generated.append(np.array(pending.generated))
        self._collected += 1
        audio_codes = None
        if self._collected > cfg.max_delay:
            # Stream k of the completed frame was sampled max_delay - delay_k steps ago.
            audio_codes = np.array([
                self._generated[-1 - (cfg.max_delay - d)][k]
                for k, d in enumerate(cfg.delays[1 : cfg.dep_q + 1], start=1)
            ], dtype=np.int64)
        return StepOutput(text_token=int(self._generated[-1][0]), audio_codes=audio_codes)

    def _take_user(self, user_codes: Any) -> list[int | mx.array]:
        """Check and keep the user's codes of this frame; the step's input tokens."""
        cfg = self.cfg
        user = np.asarray(user_codes).reshape(-1)
        if user.shape[0] != self.num_user:
            raise ValueError(f"expected {self.num_user} user codes, got {user.shape[0]}")
        if user.min() < 0 or user.max() >= cfg.card:
            raise ValueError(f"user codes must lie in [0, {cfg.card}), got {user.tolist()}: are they Mimi's codes?")
        self._user.append(user.astype(np.int32))
        return self._input_tokens()

    def _submitted(self, generated: mx.array) -> PendingStep:
        pending = PendingStep(self.step_index, generated)
        self._last = generated
        self.step_index += 1
        return pending
