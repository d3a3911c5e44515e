"""Streaming generation with the semantics of NVIDIA's PersonaPlex `LMGen` (its `personaplex` repo, commit 3428dfd,
`moshi/moshi/models/lm.py`), where they differ from Kyutai's.

NVIDIA keeps every stream's tokens in a ring of `max_delay + 3` steps with a `provided` mask. Call n writes the
given tokens at n + delay (the user's codes, and during a prompt Moshi's text and audio), and the initial token at
n on streams with n <= delay. Call 0 only sets the initial tokens. Call n >= 1 feeds ring column n - 1 and fills
column n: each token there that was provided wins over the sampled one, inside the depth transformer too (the next
depth step is fed the provided token). All 16 depth steps run, the user's 8 included, their tokens overwritten by
the provided ones. From call max_delay + 1 on, a call returns the frame whose stream k sits at n - max_delay +
delay_k: Moshi's audio from the third call.

NVIDIA's attention caches (`RingKVCache` in its `modules/transformer.py`) label the oldest slot of a full ring as
the next step, so every attention sees one key fewer than the ring holds: `context - 1` steps in the temporal
transformer, 15 in the depth transformer (its 16th step does not see its first). Kyutai's 0.2.13 keeps them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from . import mlx_lm_parts
from .generate import LmGen, PendingStep, StepOutput
from .lm import Lm
from .persona_layout import MOSHI_STREAMS

UNGENERATED = -2  # NVIDIA's value of a ring entry not generated yet
PREFILL_CHUNK = 64  # steps of a prompt the temporal transformer takes at once


def ring_length(cfg: Any) -> int:
    """Columns of NVIDIA's token ring (and of a saved voice's `cache`): `max_delay + 3`."""
    return cfg.max_delay + 3


class PersonaGen(LmGen):
    """`LmGen` with PersonaPlex's semantics (`lm.config.takes_persona`): the same interface (`submit`, `collect`,
    `step`, `step_forced`, `reset`), the user's codes in, Moshi's text and audio out.

    `StepOutput.text_token` is the text token of this call (sampled, or provided), `audio_codes` Moshi's codes
    of the frame completed at this call. Prompts go through `force` (see `moshi_mlx.persona.prompt.prefill`).
    """

    def __init__(self, lm: Lm, **kwargs: Any):
        super().__init__(lm, **kwargs)
        self.num_user = lm.config.n_q - MOSHI_STREAMS

    def reset(self) -> None:
        super().reset()
        cfg = self.cfg
        self.cache = [mlx_lm_parts.RotatingKVCache(max_size=cfg.context - 1) if cfg.context else mlx_lm_parts.KVCache()
                      for _ in range(cfg.num_layers)]
        shape = (cfg.num_codebooks, ring_length(cfg))
        # Host side of NVIDIA's ring: the provided tokens and their mask. Sampled tokens stay on the device until
        # collected; collected columns (newest last) are in `self._generated`.
        self._ring = np.full(shape, UNGENERATED, np.int64)
        self._provided = np.zeros(shape, bool)
        self._initial = np.array([cfg.text_card] + [cfg.card] * cfg.n_q, np.int64)

    def prefill(self, prompt: Any, on_step: Callable[[int, int], None] | None = None) -> int:
        """Run a persona prompt (`moshi_mlx.persona.prompt.PersonaPrompt`) on a fresh generator; returns its steps."""
        from ..persona.prompt import prefill

        return prefill(self, prompt, on_step)

    # The ring.
    def _prepare(self, user: np.ndarray | None, moshi: np.ndarray | None = None, text: int | None = None) -> None:
        """NVIDIA's `prepare_step_input` writes for call `step_index`: given tokens at n + delay, initial tokens."""
        cfg, n = self.cfg, self.step_index
        R = ring_length(cfg)
        for first, tokens in ((1 + MOSHI_STREAMS, user), (1, moshi), (0, None if text is None else [text])):
            if tokens is None:
                continue
            for k, token in enumerate(tokens, start=first):
                self._ring[k, (n + cfg.delays[k]) % R] = token
                self._provided[k, (n + cfg.delays[k]) % R] = True
        for k, delay in enumerate(cfg.delays):
            if n <= delay:
                self._ring[k, n % R] = self._initial[k]
                self._provided[k, n % R] = True

    def _target(self) -> tuple[np.ndarray, np.ndarray]:
        """Call n's provided tokens and mask (column n), then column n - 1 leaves the mask."""
        R, n = ring_length(self.cfg), self.step_index
        forced, mask = self._ring[:, n % R].copy(), self._provided[:, n % R].copy()
        self._provided[:, (n - 1) % R] = False
        return forced, mask

    def _target_arrays(self) -> tuple[mx.array, mx.array]:
        forced, mask = self._target()
        return mx.array(forced.astype(np.int32)), mx.array(mask)

    # The step.
    def _input_tokens(self) -> list[int | mx.array]:
        """Ring column n - 1 as the device holds it (call 0 has none)."""
        return [] if self._last is None else mx.split(self._last, self.cfg.num_codebooks)

    def _last_segment(self, x: mx.array, attention: mx.array, forced: mx.array, mask: mx.array) -> mx.array:
        hidden, text = self._text_segment(x, attention)
        text = mx.where(mask[:1], forced[:1], text)
        return mx.concatenate([text, self._forced_depth(hidden, text, forced[1:], mask[1:])[0]])

    def _forced_depth(
        self, hidden: mx.array, text: mx.array, forced: mx.array, mask: mx.array
    ) -> tuple[mx.array, mx.array]:
        """The depth transformer's tokens (a provided token replaces the sampled one and is fed on) and logits."""
        layers = self.cfg.depformer_num_layers
        caches = [mlx_lm_parts.RotatingKVCache(max_size=self.cfg.dep_q - 1) for _ in range(layers)]
        prev, tokens, all_logits = text, [], []
        for k in range(self.cfg.dep_q):
            logits = self.lm.depformer.step(k, hidden, prev.reshape(hidden.shape[:-1]), caches, masked=False)
            logits = (logits[:, -1] if logits.ndim == 3 else logits).astype(mx.float32)
            sampled = self.sample_audio(logits).astype(mx.int32).reshape(1)
            prev = mx.where(mask[k : k + 1], forced[k : k + 1], sampled)
            tokens.append(prev)
            all_logits.append(logits)
        return mx.concatenate(tokens), mx.stack(all_logits)

    def submit(self, user_codes: Any, moshi: Any = None, text: int | None = None) -> PendingStep:
        """Start call `step_index` with the user's codes (and, as NVIDIA's `step` takes them, Moshi's provided
        audio codes and text token); `collect` reads it."""
        tokens = self._take_user(user_codes)
        self._prepare(self._user[-1], _codes(moshi), text)
        if self.step_index == 0:
            generated = self._first_call()
        else:
            forced, mask = self._target_arrays()
            generated = self._segments[-1](*self._through_layers(tokens), forced, mask)
        mx.async_eval(generated, mx.random.state)
        return self._submitted(generated)

    def step_forced(self, user_codes: Any, text: int | None = None, audio: Any = None) -> StepOutput:
        """`step` through the uncompiled model, with the logits; `text` / `audio` are provided as NVIDIA's `step`
        takes `text_token` / `moshi_tokens` (written at this call + their delays)."""
        if self._collected != self.step_index:
            raise RuntimeError("collect the submitted steps before a forced step")
        self._take_user(user_codes)
        self._prepare(self._user[-1], _codes(audio), text)
        if self.step_index == 0:
            return self._collect(self._submitted(self._first_call()))
        forced, mask = self._target_arrays()
        inputs = self._last.reshape(1, -1, 1)
        hidden, text_logits = self.lm.temporal(inputs, self.cache)
        text_logits = text_logits[:, -1].astype(mx.float32)
        sampled = mx.where(mask[:1], forced[:1], self.sample_text(text_logits).astype(mx.int32).reshape(1))
        codes, audio_logits = self._forced_depth(hidden, sampled, forced[1:], mask[1:])
        return self._forced_output(sampled, codes, text_logits, audio_logits)

    def _first_call(self) -> mx.array:
        """Call 0 computes nothing: ring column 0 holds the initial tokens."""
        self._ring[:, 0] = self._initial
        return mx.array(self._initial.astype(np.int32))

    def _collect(self, pending: PendingStep, extra: list[mx.array] | tuple[()] = ()) -> StepOutput:
        if pending.index != self._collected:
            raise RuntimeError(f"steps are collected in order: expected step {self._collected}, got {pending.index}")
        mx.eval(pending.generated, *extra)  # the wait
        column = np.array(pending.generated).astype(np.int64)
        self._generated.append(column)
        self._collected += 1
        text = int(column[0]) if pending.index > 0 else self.cfg.existing_text_padding_id
        return StepOutput(text_token=text, audio_codes=self._frame(pending.index))

    def _frame(self, n: int) -> np.ndarray | None:
        """Moshi's codes of NVIDIA's output at call n: stream k from column n - max_delay + delay_k."""
        cfg = self.cfg
        if n <= cfg.max_delay:
            return None
        return np.array([self._generated[-1 - (cfg.max_delay - d)][k]
                         for k, d in enumerate(cfg.delays[1 : MOSHI_STREAMS + 1], start=1)], dtype=np.int64)

    # Prompts: every token provided, so the calls run batched.
    def force(
        self,
        text: np.ndarray,
        moshi: np.ndarray,
        user: np.ndarray,
        embeddings: mx.array | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        """Run calls whose every token is provided (`text [S]`, `moshi [S, 8]`, `user [S, 8]`): the ring as
        NVIDIA's `step` leaves it, the temporal transformer over the calls' inputs in chunks of `PREFILL_CHUNK`
        (one host synchronisation each; `on_chunk(calls)` after each), no sampling (nothing sampled is kept).

        `embeddings` (`[calls - 1, dim]`, from call 0) replace the inputs, as NVIDIA's `step_embeddings` does.
        """
        if self._collected != self.step_index:
            raise RuntimeError("collect the submitted steps before forcing steps")
        first, columns = self.step_index, []
        for i in range(len(text)):
            self._prepare(moshi=moshi[i], user=user[i], text=int(text[i]))
            if self.step_index == 0:
                self._first_call()
                column = self._initial.copy()
            else:
                columns.append(self._generated[-1])
                forced, mask = self._target()
                if not mask.all():
                    raise ValueError(f"call {self.step_index} of a prompt leaves streams {np.flatnonzero(~mask)} "
                                     "to sample")
                column = forced
            self._generated.append(column)
            self.step_index += 1
            self._collected += 1
        self._last = mx.array(self._generated[-1].astype(np.int32))
        if embeddings is not None:
            if first != 0 or len(embeddings) != len(columns):
                raise ValueError(f"{len(embeddings)} embeddings for {len(columns)} calls from call {first}")
            x = embeddings.reshape(1, len(columns), -1)
        elif columns:
            x = self.lm.embed_inputs(mx.array(np.stack(columns, axis=1)[None].astype(np.int32)))
        else:
            return
        self._temporal_chunks(x.astype(self.lm.out_norm.weight.dtype), on_chunk)

    def _temporal_chunks(self, x: mx.array, on_chunk: Callable[[int], None] | None) -> None:
        """The temporal transformer over `x [1, T, dim]` into the caches, `PREFILL_CHUNK` steps at a time."""
        transformer = self.lm.transformer
        for start in range(0, x.shape[1], PREFILL_CHUNK):
            chunk = x[:, start : start + PREFILL_CHUNK]
            offset = self.cache[0].offset
            mask = mlx_lm_parts.create_causal_mask(chunk.shape[1], offset) if chunk.shape[1] > 1 else None
            chunk = transformer.add_positions(chunk, offset)
            for layer, cache in zip(transformer.layers, self.cache, strict=True):
                chunk = layer(chunk, cache, mask)
            mx.eval(chunk, [(c.keys, c.values) for c in self.cache])
            if on_chunk is not None:
                on_chunk(chunk.shape[1])

    def restore_ring(self, tokens: np.ndarray) -> None:
        """Replace the ring's tokens with a saved one (`[num_codebooks, ring_length]`), as NVIDIA does after
        replaying a voice's embeddings; the provided mask stays as the replay left it."""
        cfg = self.cfg
        R, n = ring_length(cfg), self.step_index
        self._ring = tokens.astype(np.int64).copy()
        self._generated.clear()
        for p in range(n - 1 - cfg.max_delay, n):
            self._generated.append(self._ring[:, p % R].copy())
        self._last = mx.array(self._generated[-1].astype(np.int32))


def _codes(codes: Any) -> np.ndarray | None:
    return None if codes is None else np.asarray(codes).reshape(-1).astype(np.int64)
