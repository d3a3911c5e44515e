"""Moshi's LM: embeddings, the temporal transformer (Helium) and the depth transformer."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import mlx_lm_parts
from .conditioners import ConditionProvider
from .config import LmConfig
from .embeddings import ZERO_TOKEN, make_embedding
from .transformer import Transformer, make_norm


def embed(table: nn.Module, tokens: mx.array) -> mx.array:
    """Look tokens up; the zero token (-1) embeds to exactly zero."""
    out = table(mx.maximum(tokens, 0))
    return mx.where((tokens == ZERO_TOKEN)[..., None], mx.zeros((), out.dtype), out)


class DepformerSlice(nn.Module):
    """Everything the depth transformer uses at one codebook step k (Kyutai's MLX layout)."""

    def __init__(self, cfg: LmConfig, k: int):
        super().__init__()
        rows = cfg.text_card + 1 if k == 0 else cfg.card + 1
        self.emb = make_embedding(rows, cfg.depformer_dim, cfg.depformer_low_rank_embeddings,
                                  demux=k == 0 and cfg.demux_second_stream)
        self.linear_in = nn.Linear(cfg.dim, cfg.depformer_dim, bias=False)
        self.linear_out = nn.Linear(cfg.depformer_dim, cfg.card, bias=False)
        self.transformer = Transformer(cfg.depth_transformer())

    def embed_token(self, tokens: mx.array, masked: bool = True) -> mx.array:
        """`masked=False` when `tokens` cannot hold the zero token (saves its test)."""
        return embed(self.emb, tokens) if masked else self.emb(tokens)


class Depformer(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.slices = [DepformerSlice(cfg, k) for k in range(cfg.dep_q)]

    def step(
        self, k: int, temporal_out: mx.array, prev_token: mx.array, caches: list[Any], masked: bool = True
    ) -> mx.array:
        """Logits of codebook k, given the previous token (text for k=0) and this frame's caches.

        Shapes: `[B, 1, dim]` and `[B, 1]`, or `[B, dim]` and `[B]` (one step, 2-D activations).
        """
        s = self.slices[k]
        x = s.linear_in(temporal_out) + s.embed_token(prev_token, masked)
        # Layer i of every slice shares one cache: step k attends to the keys of steps 0..k, and the
        # caches' offset (k) is the position for the depth transformer's positional embedding, if any.
        x = s.transformer(x, caches)
        return s.linear_out(x)


class Lm(nn.Module):
    def __init__(self, config: LmConfig):
        super().__init__()
        self.config = config
        # Per-module {"bits", "group_size"} of a loaded quantized checkpoint (read-only, not a parameter).
        self.quantization: Mapping[str, Mapping[str, int]] = MappingProxyType({})
        self.text_emb = make_embedding(config.text_card + 1, config.dim, demux=config.demux_second_stream)
        self.audio_embs = [nn.Embedding(config.card + 1, config.dim) for _ in range(config.n_q)]
        self.transformer = Transformer(config.main_transformer())
        self.out_norm = make_norm(config.norm, config.dim)
        self.text_linear = nn.Linear(config.dim, config.text_out_card, bias=False)
        self.depformer = Depformer(config)
        if config.conditioners:
            self.condition_provider = ConditionProvider(config.dim, config.conditioners, config.fuser)
        if config.extra_heads_num_heads:  # STT's voice-activity heads, on the normed hidden state
            self.extra_heads = [nn.Linear(config.dim, config.extra_heads_dim, bias=False)
                                for _ in range(config.extra_heads_num_heads)]

    # Streaming pieces.
    def make_cache(self) -> list[Any]:
        """Per-layer caches of the temporal transformer; the window holds exactly `context` keys."""
        context = self.config.context
        return [
            mlx_lm_parts.RotatingKVCache(max_size=context) if context else mlx_lm_parts.KVCache()
            for _ in range(self.config.num_layers)
        ]

    def make_depformer_cache(self) -> list[Any]:
        return [mlx_lm_parts.ConcatenateKVCache() for _ in range(self.config.depformer_num_layers)]

    def embed_inputs(self, tokens: mx.array) -> mx.array:
        """Sum of the stream embeddings; tokens `[B, K, T]` -> `[B, T, dim]`."""
        x = embed(self.text_emb, tokens[:, 0])
        for j, table in enumerate(self.audio_embs):
            x = x + embed(table, tokens[:, j + 1])
        return x

    def embedding_rows(self, tokens: list[int | mx.array]) -> list[mx.array]:
        """Each stream's embedding `[1, dim]` of one step's tokens: host ints (zero tokens, -1, are left out) or
        one-element device arrays (sampled tokens, never zero)."""
        tables = [self.text_emb, *self.audio_embs]
        return [
            table(token if isinstance(token, mx.array) else mx.array([token]))
            for table, token in zip(tables, tokens, strict=True)
            if isinstance(token, mx.array) or token != ZERO_TOKEN
        ]

    def temporal(
        self, tokens: mx.array, caches: list[Any] | None = None, condition: mx.array | None = None, cross: Any = None
    ) -> tuple[mx.array, mx.array]:
        """Temporal transformer over input tokens `[B, K, T]` -> (hidden `[B, T, dim]`, text logits).

        Conditioned models: `condition` (`[B, 1, dim]`) is added to every step's input, `cross` is the
        cross-attention source or its per-layer keys and values.
        """
        x = self.embed_inputs(tokens)
        if condition is not None:
            x = x + condition.astype(x.dtype)
        x = self.transformer(x, caches, cross)
        x = self.out_norm(x)
        return x, self.text_linear(x)

    def extra_head_probs(self, hidden: mx.array) -> mx.array:
        """Softmax of each extra head on the normed hidden state of one step (`[1, dim]` or `[1, 1, dim]`):
        `[num_heads, extra_heads_dim]` float32, as Kyutai's `LMGen.step_with_extra_heads`."""
        logits = mx.stack([head(hidden).reshape(-1) for head in self.extra_heads])
        return mx.softmax(logits.astype(mx.float32), axis=-1)

    # Teacher-forced evaluation.
    def forward_codes(self, codes: mx.array) -> tuple[mx.array, mx.array]:
        """Teacher-forced logits over codes `[B, K, T]`, aligned with the codes as Kyutai's `LMModel.forward`.

        Returns `(text_logits [B, 1, T, text_card], audio_logits [B, dep_q, T, card])`; positions without a
        valid prediction (the last `delay` steps of a delayed stream) are NaN.
        """
        cfg = self.config
        codes = mx.array(codes).astype(mx.int32)
        B, K, T = codes.shape
        if K != cfg.num_codebooks:
            raise ValueError(f"expected {cfg.num_codebooks} streams, got {K}")
        starts = [cfg.text_card] + [cfg.card] * cfg.n_q
        # The input at position t is the delayed code of position t-1 (start tokens before that).
        delayed = []
        for k, d in enumerate(cfg.delays):
            pad = mx.full((B, d + 1), starts[k], dtype=mx.int32)
            line = mx.concatenate([pad, codes[:, k, : T - d - 1]], axis=1) if T > d + 1 else pad[:, :T]
            delayed.append(line)
        inputs = mx.stack(delayed, axis=1)
        hidden, text_logits = self.temporal(inputs)

        # Depth transformer on every position at once: the target frame at position t is the delayed codes.
        targets = mx.stack(
            [mx.concatenate([mx.full((B, d), starts[k], dtype=mx.int32), codes[:, k, : T - d]], axis=1)
             for k, d in enumerate(cfg.delays[: cfg.dep_q + 1])],
            axis=1,
        )
        flat_hidden = hidden.reshape(B * T, 1, -1)
        caches = self.make_depformer_cache()
        logits = []
        for k in range(cfg.dep_q):
            prev = targets[:, k].reshape(B * T, 1)
            logits.append(self.depformer.step(k, flat_hidden, prev, caches).reshape(B, T, -1))
        audio_logits = mx.stack(logits, axis=1) if logits else mx.zeros((B, 0, T, cfg.card))

        # Undo the delays: logits for code (k, t) were produced at position t + delay_k.
        text_logits = _undelay(text_logits[:, None], cfg.delays[:1])
        if cfg.dep_q:
            audio_logits = _undelay(audio_logits, cfg.delays[1 : cfg.dep_q + 1])
        return text_logits, audio_logits


def _undelay(logits: mx.array, delays: list[int]) -> mx.array:
    B, K, T, C = logits.shape
    out = []
    for k, d in enumerate(delays):
        line = logits[:, k, d:]
        if d:
            line = mx.concatenate([line, mx.full((B, d, C), mx.nan, dtype=line.dtype)], axis=1)
        out.append(line)
    return mx.stack(out, axis=1)
