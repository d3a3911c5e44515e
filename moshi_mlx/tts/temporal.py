"""One step of the temporal transformer of a conditioned model, as compiled pieces between the attentions.

As Moshi's step (`LmGen`): the KV caches' key count grows each step, so each attention runs outside; everything
between two of them (the layer's end with its cross-attention, the next layer's start) is one compiled function
of fixed shapes reading only its layers' weights. The summed condition and each layer's cross-attention keys and
values come in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx

from ..model.lm import Lm


class Temporal:
    """`__call__(tokens [B, K, 1], caches, condition [B, 1, dim] | None, cross_kv | None) -> (hidden, logits)`,
    the same values as `Lm.temporal`."""

    def __init__(self, lm: Lm, compile: bool = True):
        self.lm = lm
        layers = lm.transformer.layers
        self._first: Callable[..., Any] = self._first_piece
        self._middle = [partial(self._middle_piece, i) for i in range(1, len(layers))]
        self._last: Callable[..., Any] = self._last_piece
        if compile:
            embeddings = [lm.text_emb.state, [e.state for e in lm.audio_embs]]
            self._first = mx.compile(self._first, inputs=[*embeddings, layers[0].state])
            self._middle = [mx.compile(piece, inputs=[layers[i].state, layers[i + 1].state])
                            for i, piece in enumerate(self._middle)]
            self._last = mx.compile(self._last, inputs=[layers[-1].state, lm.out_norm.state, lm.text_linear.state])

    def _first_piece(self, tokens: mx.array, condition: mx.array, offset: mx.array) -> tuple[mx.array, ...]:
        x = self.lm.embed_inputs(tokens)
        x = x + condition.astype(x.dtype)
        x = self.lm.transformer.add_positions(x, offset)
        return (x, *self.lm.transformer.layers[0].attention_inputs(x, offset))

    def _middle_piece(self, i: int, x: mx.array, attention: mx.array, kv: Any, offset: mx.array) -> tuple:
        layers = self.lm.transformer.layers
        x = layers[i - 1].finish(x, attention, kv or None)
        return (x, *layers[i].attention_inputs(x, offset))

    def _last_piece(self, x: mx.array, attention: mx.array, kv: Any) -> tuple[mx.array, mx.array]:
        x = self.lm.transformer.layers[-1].finish(x, attention, kv or None)
        hidden = self.lm.out_norm(x)
        return hidden, self.lm.text_linear(hidden)

    def __call__(self, tokens: mx.array, caches: list[Any], condition: mx.array | None,
                 cross_kv: list[tuple[mx.array, mx.array]] | None) -> tuple[mx.array, mx.array]:
        layers = self.lm.transformer.layers
        if condition is None:  # adding zero changes no value
            condition = mx.zeros((tokens.shape[0], 1, self.lm.config.dim))
        kv = cross_kv or [()] * len(layers)
        offset = mx.array(caches[0].offset)
        x, q, k, v = self._first(tokens, condition, offset)
        for i, (layer, cache) in enumerate(zip(layers, caches, strict=True)):
            attention = layer.self_attn.attend(q, k, v, cache)
            if i + 1 < len(layers):
                x, q, k, v = self._middle[i](x, attention, kv[i], offset)
        return self._last(x, attention, kv[-1])
