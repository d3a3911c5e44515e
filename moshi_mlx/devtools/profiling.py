"""A generator's step timed in two parts, the temporal and the depth transformer, for `moshi-mlx bench`."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import mlx.core as mx

from ..model.generate import LmGen, StepOutput
from ..model.persona_gen import PersonaGen


class StepProfiler:
    """Runs the steps of `gen` (Kyutai's `LmGen` or PersonaPlex's `PersonaGen`) with a host sync once the text
    token is sampled, which splits the step in two.

    The temporal part is the embeddings, the temporal transformer, the text logits and their sampling; the depth
    part, the depth transformer's steps. The tokens are those `gen.step` gives (the same pieces, compiled alike,
    drawing from the same random state); the extra sync makes the step slower, so time the real loop apart.
    """

    def __init__(self, gen: LmGen):
        self.gen = gen
        self._persona = isinstance(gen, PersonaGen)
        parts = [self._persona_text, self._persona_depth] if self._persona else [gen._text_segment,
                                                                                   gen._depth_segment]
        if gen._compile:
            state = [gen.lm.state, mx.random.state]
            parts = [partial(mx.compile, inputs=state, outputs=[mx.random.state])(f) for f in parts]
        self._text_part, self._depth_part = parts

    # PersonaGen's last segment in two: a provided token wins over the sampled one (its `_last_segment`).
    def _persona_text(self, x: mx.array, attention: mx.array, forced: mx.array, mask: mx.array) -> tuple[mx.array, ...]:
        hidden, text = self.gen._text_segment(x, attention)
        return hidden, mx.where(mask[:1], forced[:1], text)

    def _persona_depth(self, hidden: mx.array, text: mx.array, forced: mx.array, mask: mx.array) -> mx.array:
        return mx.concatenate([text, self.gen._forced_depth(hidden, text, forced[1:], mask[1:])[0]])

    def step(self, user_codes: Any) -> tuple[StepOutput, float, float]:
        """`gen.step(user_codes)`, timed: (output, temporal ms, depth ms)."""
        gen = self.gen
        tokens = gen._take_user(user_codes)
        provided: tuple[mx.array, ...] = ()
        if self._persona:
            gen._prepare(gen._user[-1])
            if gen.step_index == 0:  # PersonaPlex's first call computes nothing
                return gen.collect(gen._submitted(gen._first_call())), 0.0, 0.0
            provided = gen._target_arrays()
        start = time.perf_counter()
        hidden, text = self._text_part(*gen._through_layers(tokens), *provided)
        mx.eval(hidden, text, mx.random.state)
        split = time.perf_counter()
        generated = self._depth_part(hidden, text, *provided)
        mx.eval(generated, mx.random.state)
        end = time.perf_counter()
        return gen.collect(gen._submitted(generated)), (split - start) * 1000, (end - split) * 1000
