"""Mimi's 8-layer transformers (before quantization and after), streaming with a bounded attention window.

Each layer keeps the keys and values of the last `context` steps in a fixed-size buffer: a step appends its
keys, attends over the last `context` of them (Kyutai's ring buffer of that capacity holds exactly those), and
keeps them. Positions only enter through RoPE and the mask, so the stream can run forever in constant memory.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .mimi_config import MimiConfig

EMPTY = -1  # position of a buffer slot that holds no key yet


def rope_frequencies(head_dim: int, max_period: float) -> mx.array:
    """`exp(-i * 2 ln(max_period) / head_dim)`: the exponent rounded to float32 as PyTorch forms it, the exp exact."""
    exponent = np.arange(head_dim // 2, dtype=np.float32) * np.float32(-math.log(max_period) * 2 / head_dim)
    return mx.array(np.exp(exponent.astype(np.float64)).astype(np.float32))


def rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate interleaved pairs (2i, 2i+1) of `[B, H, T, D]` in float32; `cos`, `sin` are `[T, D/2]`."""
    B, H, T, D = x.shape
    pairs = x.astype(mx.float32).reshape(B, H, T, D // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = mx.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
    return out.reshape(B, H, T, D).astype(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.in_proj = nn.Linear(cfg.dimension, 3 * cfg.dimension, bias=False)
        self.out_proj = nn.Linear(cfg.dimension, cfg.dimension, bias=False)

    def __call__(
        self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array, cache: tuple[mx.array, mx.array]
    ) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        B, T, D = x.shape
        qkv = self.in_proj(x).reshape(B, T, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = rope(qkv[0], cos, sin), rope(qkv[1], cos, sin), qkv[2]
        keys = mx.concatenate([cache[0], k], axis=2)[:, :, T:]
        values = mx.concatenate([cache[1], v], axis=2)[:, :, T:]
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=self.head_dim**-0.5, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, T, D)), (keys, values)


class TransformerLayer(nn.Module):
    """Pre-norm LayerNorm layer: x + scale_1 * attn(norm1(x)), then x + scale_2 * linear2(gelu(linear1(norm2(x))))."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.norm1 = nn.LayerNorm(cfg.dimension, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.dimension, eps=1e-5)
        self.linear1 = nn.Linear(cfg.dimension, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.dimension, bias=False)
        self.layer_scale_1 = LayerScale(cfg.dimension)
        self.layer_scale_2 = LayerScale(cfg.dimension)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, mask: mx.array, cache: Any) -> tuple[mx.array, Any]:
        update, cache = self.self_attn(self.norm1(x), cos, sin, mask, cache)
        x = x + self.layer_scale_1(update)
        x = x + self.layer_scale_2(self.linear2(nn.gelu(self.linear1(self.norm2(x)))))
        return x, cache


class LayerScale(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        self.scale = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.scale * x


class MimiTransformer(nn.Module):
    """Causal transformer over `[B, T, dimension]`, attending to the last `context` steps, RoPE at any position."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.context = cfg.context
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]
        self._freqs = rope_frequencies(cfg.head_dim, cfg.max_period)

    def init_state(self, batch: int, dtype: mx.Dtype) -> dict[str, Any]:
        shape = (batch, self.num_heads, self.context, self.head_dim)
        return {
            "offset": mx.array(0, mx.int32),  # position of the next step
            "positions": mx.full((self.context,), EMPTY, mx.int32),  # position of each buffer slot
            "layers": [(mx.zeros(shape, dtype), mx.zeros(shape, dtype)) for _ in self.layers],
        }

    def __call__(self, x: mx.array, state: dict[str, Any]) -> tuple[mx.array, dict[str, Any]]:
        T = x.shape[1]
        offset = state["offset"]
        steps = offset + mx.arange(T, dtype=mx.int32)
        angles = steps.astype(mx.float32)[:, None] * self._freqs
        cos, sin = mx.cos(angles), mx.sin(angles)
        positions = mx.concatenate([state["positions"], steps])[T:]
        delta = steps[:, None] - positions[None]
        mask = (positions[None] != EMPTY) & (delta >= 0) & (delta < self.context)
        caches = []
        for layer, cache in zip(self.layers, state["layers"], strict=True):
            x, cache = layer(x, cos, sin, mask, cache)
            caches.append(cache)
        return x, {"offset": offset + T, "positions": positions, "layers": caches}
