"""Streaming generation with the semantics of Kyutai's PyTorch `LMGen.step`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import make_sampler

from .lm import Lm

Sampler = Callable[[mx.array], mx.array]


@dataclass
class StepOutput:
    """What one step hands out.

    `text_token` was sampled at this step; `audio_codes` is Moshi's audio frame completed at this step
    (`[a0(t-1), a1..a7(t)]` for the 7B delays), None until the acoustic delay has passed.
    """

    text_token: int
    audio_codes: np.ndarray | None
    text_logits: np.ndarray | None = None
    audio_logits: np.ndarray | None = None


def _sampler(temp: float, top_k: int, vocab: int) -> Sampler:
    if temp <= 0:
        return lambda logits: mx.argmax(logits, axis=-1)
    # Kyutai's top-k keeps everything when k covers the vocabulary; mlx-lm wants 0 for that.
    return make_sampler(temp=temp, top_k=top_k if 0 < top_k < vocab else 0)


class LmGen:
    """Frame-by-frame generation: the user's codes in, Moshi's text and audio out.

    Step t feeds: the text and audio tokens sampled at t-1, the user's frame t on streams with delay 0 and
    frame t-1 on delayed ones; a stream gets its start token while t <= its delay.
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
        self.sample_text = _sampler(temp_text, top_k_text, cfg.text_card)
        self.sample_audio = _sampler(temp, top_k, cfg.card)
        self.seed = seed
        self.num_user = cfg.n_q - cfg.dep_q
        # The depth transformer's 8 steps depend on nothing but this frame: compile them once.
        self._depth = self._sample_depth
        if compile:
            state = [lm.state, mx.random.state]
            self._depth = partial(mx.compile, inputs=state, outputs=[mx.random.state])(self._sample_depth)
        self.reset()

    def reset(self) -> None:
        """Start a new conversation."""
        if self.seed is not None:
            mx.random.seed(self.seed)
        mx.eval(mx.random.state)
        cfg = self.cfg
        self.step_index = 0
        self.cache = self.lm.make_cache()
        starts = [cfg.text_card] + [cfg.card] * cfg.n_q
        self._starts = mx.array(starts, dtype=mx.int32)
        # Moshi's tokens sampled at the last max_delay + 1 steps, newest last, each [1 + dep_q].
        self._generated: deque[mx.array] = deque(maxlen=cfg.max_delay + 1)
        # The user's last max_delay + 1 frames, newest last, each [n_q - dep_q].
        self._user: deque[mx.array] = deque(maxlen=cfg.max_delay + 1)

    def _inputs(self) -> mx.array:
        """Tokens `[1, K, 1]` fed to the temporal transformer at this step."""
        cfg, t = self.cfg, self.step_index
        dep = cfg.dep_q + 1
        tokens = []
        for k, d in enumerate(cfg.delays):
            if t <= d:
                tokens.append(self._starts[k : k + 1])
            elif k < dep:
                tokens.append(self._generated[-1][k : k + 1])
            else:
                tokens.append(self._user[-1 - d][k - dep : k - dep + 1])
        return mx.concatenate(tokens).reshape(1, -1, 1)

    def _run_depth(
        self, hidden: mx.array, text: mx.array, forced: np.ndarray | None = None
    ) -> tuple[mx.array, mx.array]:
        """Sample (or take from `forced`) the frame's codebooks in order; returns tokens and logits."""
        caches = self.lm.make_depformer_cache()
        prev, tokens, all_logits = text, [], []
        for k in range(self.cfg.dep_q):
            logits = self.lm.depformer.step(k, hidden, prev.reshape(1, 1), caches)[:, -1]
            logits = logits.astype(mx.float32)
            if forced is None:
                prev = self.sample_audio(logits).astype(mx.int32).reshape(1)
            else:
                prev = mx.array(forced[k : k + 1])
            tokens.append(prev)
            all_logits.append(logits)
        return mx.concatenate(tokens), mx.stack(all_logits)

    def _sample_depth(self, hidden: mx.array, text: mx.array) -> mx.array:
        return self._run_depth(hidden, text)[0]

    def step(
        self,
        user_codes: Any,
        force_text: int | None = None,
        force_audio: Any = None,
        return_logits: bool = False,
    ) -> StepOutput:
        """Run one 80 ms frame; `user_codes` are the user's `n_q - dep_q` Mimi codes of this frame."""
        cfg = self.cfg
        user = np.asarray(user_codes).reshape(-1)
        if user.shape[0] != self.num_user:
            raise ValueError(f"expected {self.num_user} user codes, got {user.shape[0]}")
        if user.min() < 0 or user.max() >= cfg.card:
            raise ValueError(f"user codes must lie in [0, {cfg.card}), got {user.tolist()}: are they Mimi's codes?")
        self._user.append(mx.array(user.astype(np.int32)))

        hidden, text_logits = self.lm.temporal(self._inputs(), self.cache)
        text_logits = text_logits[:, -1].astype(mx.float32)
        if force_text is None:
            text = self.sample_text(text_logits)
        else:
            text = mx.array([int(force_text)], dtype=mx.int32)
        text = text.astype(mx.int32).reshape(1)

        if force_audio is None and not return_logits:
            audio = self._depth(hidden, text)
        else:
            forced = None if force_audio is None else np.asarray(force_audio).reshape(-1).astype(np.int32)
            audio, audio_logits = self._run_depth(hidden, text, forced)
        generated = mx.concatenate([text, audio])
        self._generated.append(generated)
        self.step_index += 1

        ready = self.step_index > cfg.max_delay
        outputs = [generated[:1]]
        if ready:
            # Stream k of the completed frame was sampled max_delay - delay_k steps ago.
            frame = [
                self._generated[-1 - (cfg.max_delay - d)][k : k + 1]
                for k, d in enumerate(cfg.delays[1 : cfg.dep_q + 1], start=1)
            ]
            outputs.append(mx.concatenate(frame))
        extra = [text_logits[0], audio_logits[:, 0]] if return_logits else []
        tokens = mx.concatenate(outputs)
        # The one host synchronisation of the step. The random state goes with it, so that no pending work is
        # left behind for another frame (or another thread: MLX's GPU streams are per thread).
        mx.eval(tokens, *extra, mx.random.state)
        host = np.array(tokens)
        return StepOutput(
            text_token=int(host[0]),
            audio_codes=host[1:].astype(np.int64) if ready else None,
            text_logits=np.array(extra[0]) if extra else None,
            audio_logits=np.array(extra[1]) if extra else None,
        )
