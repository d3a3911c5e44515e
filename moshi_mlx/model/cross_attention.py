"""Cross-attention of the temporal transformer onto a fixed source (Kyutai's conditioned models, e.g. TTS voices).

One `in_proj` holds the query, key and value projections stacked on its output rows, as Kyutai's checkpoints
store them; the keys and values of the source are computed once per generation (`source_kv`) and every step's
queries attend to all of them (no mask, no positions: the source carries its own position embedding).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .config import TransformerConfig

CrossKv = tuple[mx.array, mx.array]


def _rows(linear: nn.Module, x: mx.array, start: int, stop: int) -> mx.array:
    """`x` through output rows `start:stop` of `linear` (plain or quantized), without computing the others."""
    if "scales" in linear:
        return mx.quantized_matmul(
            x, linear.weight[start:stop], linear.scales[start:stop], linear.biases[start:stop],
            transpose=True, group_size=linear.group_size, bits=linear.bits,
        )
    return x @ linear.weight[start:stop].T


class CrossAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.dim = cfg.dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.in_proj = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def _heads(self, y: mx.array) -> mx.array:
        B, T, _ = y.shape
        return y.reshape(B, T, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def source_kv(self, src: mx.array) -> CrossKv:
        """Keys and values `[B, H, S, head_dim]` of the source `[B, S, dim]`."""
        dtype = self.in_proj.scales.dtype if "scales" in self.in_proj else self.in_proj.weight.dtype
        kv = _rows(self.in_proj, src.astype(dtype), self.dim, 3 * self.dim)
        k, v = mx.split(kv, 2, axis=-1)
        return self._heads(k), self._heads(v)

    def __call__(self, x: mx.array, kv: CrossKv | mx.array) -> mx.array:
        """`x` `[B, T, dim]` or one step's `[B, dim]`; `kv` from `source_kv`, or the source itself."""
        k, v = self.source_kv(kv) if isinstance(kv, mx.array) else kv
        squeeze = x.ndim == 2
        q = self._heads(_rows(self.in_proj, x[:, None] if squeeze else x, 0, self.dim))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        B, H, T, D = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(B, T, H * D)
        out = self.out_proj(out)
        return out[:, 0] if squeeze else out
