"""An `LmGen` step timed in two parts, the temporal and the depth transformer, for `moshi-mlx bench`."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import mlx.core as mx

from ..model.generate import LmGen, StepOutput


class StepProfiler:
    """Runs the steps of `gen` with a host sync once the text token is sampled, which splits the step in two.

    The temporal part is the embeddings, the temporal transformer, the text logits and their sampling; the depth
    part, the depth transformer's steps. The tokens are those `gen.step` gives (the same pieces, compiled alike,
    drawing from the same random state); the extra sync makes the step slower, so time the real loop apart.
    """

    def __init__(self, gen: LmGen):
        self.gen = gen
        parts = [gen._text_segment, gen._depth_segment]
        if gen._compile:
            state = [gen.lm.state, mx.random.state]
            parts = [partial(mx.compile, inputs=state, outputs=[mx.random.state])(f) for f in parts]
        self._text_part, self._depth_part = parts

    def step(self, user_codes: Any) -> tuple[StepOutput, float, float]:
        """`gen.step(user_codes)`, timed: (output, temporal ms, depth ms)."""
        gen = self.gen
        tokens = gen._take_user(user_codes)
        start = time.perf_counter()
        hidden, text = self._text_part(*gen._through_layers(tokens))
        mx.eval(hidden, text, mx.random.state)
        split = time.perf_counter()
        generated = self._depth_part(hidden, text)
        mx.eval(generated, mx.random.state)
        end = time.perf_counter()
        return gen.collect(gen._submitted(generated)), (split - start) * 1000, (end - split) * 1000
