"""Kyutai's streaming transformer blocks: norms, attention with a sliding window, MLPs."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import mlx_lm_parts
from .config import TransformerConfig
from .cross_attention import CrossAttention


class RmsNorm(nn.Module):
    """RMSNorm `x * weight * rsqrt(mean(x^2) + eps)`, optionally computed in float32."""

    def __init__(self, dims: int, eps: float, float32: bool):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps
        self.float32 = float32

    def __call__(self, x: mx.array) -> mx.array:
        if self.float32:
            y = mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps)
            return y.astype(x.dtype)
        return mx.fast.rms_norm(x, self.weight, self.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with bias, optionally computed in float32."""

    def __init__(self, dims: int, eps: float, float32: bool):
        super().__init__(dims, eps=eps)
        self.float32 = float32

    def __call__(self, x: mx.array) -> mx.array:
        if self.float32:
            y = mx.fast.layer_norm(
                x.astype(mx.float32),
                self.weight.astype(mx.float32),
                self.bias.astype(mx.float32),
                self.eps,
            )
            return y.astype(x.dtype)
        return super().__call__(x)


def make_norm(kind: str, dims: int) -> nn.Module:
    """The norms of Kyutai's `create_norm_fn`, with its epsilons."""
    if kind == "rms_norm_f32":
        return RmsNorm(dims, 1e-8, float32=True)
    if kind == "rms_norm":
        return RmsNorm(dims, 1e-5, float32=False)
    if kind == "layer_norm":
        return LayerNorm(dims, 1e-5, float32=False)
    if kind == "layer_norm_f32":
        return LayerNorm(dims, 1e-8, float32=True)
    raise ValueError(f"unknown norm {kind!r}")


class LayerScale(nn.Module):
    def __init__(self, dims: int, init: float):
        super().__init__()
        self.scale = mx.full((dims,), init)

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


def sin_embedding(positions: mx.array, dims: int, max_period: float) -> mx.array:
    """Sinusoidal embedding `[cos(phase), sin(phase)]` with Kyutai's frequency spacing."""
    half = dims // 2
    exponents = mx.arange(half, dtype=mx.float32) / (half - 1)
    phase = positions.astype(mx.float32)[..., None] / (max_period**exponents)
    return mx.concatenate([mx.cos(phase), mx.sin(phase)], axis=-1)


def rope(x: mx.array, offset: int | mx.array, max_period: float) -> mx.array:
    """Kyutai's RoPE on `[B, H, T, head_dim]`: interleaved pairs (2i, 2i+1), MLX's "traditional" layout.

    Computed in float32 whatever the model's dtype, as Kyutai does (MLX's CPU kernel would round the
    rotation to bfloat16).
    """
    y = mx.fast.rope(x.astype(mx.float32), x.shape[-1], traditional=True, base=max_period, scale=1.0, offset=offset)
    return y.astype(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.use_rope = cfg.positional_embedding in ("rope", "sin_rope")
        self.max_period = cfg.max_period
        self.in_proj = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def _heads(self, y: mx.array, heads: int) -> mx.array:
        """`[B, T, heads * head_dim]` -> `[B, heads, T, head_dim]`; a one-step `[B, ...]` input takes one reshape."""
        if y.ndim == 2:
            return y.reshape(y.shape[0], heads, 1, self.head_dim)
        B, T, _ = y.shape
        return y.reshape(B, T, heads, self.head_dim).transpose(0, 2, 1, 3)

    def project(self, x: mx.array, offset: int | mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Queries, keys and values `[B, H, T, head_dim]`, rotated for positions from `offset` (int or array).

        `x` is `[B, T, dim]`, or `[B, dim]` for one step: 2-D activations keep the matrix products free of the
        reshapes MLX adds around a batched product.
        """
        qk, v = mx.split(self.in_proj(x), [2 * self.num_heads * self.head_dim], axis=-1)
        qk = self._heads(qk, 2 * self.num_heads)
        if self.use_rope:  # queries and keys rotated together: one kernel
            qk = rope(qk, offset, self.max_period)
        q, k = mx.split(qk, 2, axis=1)
        return q, k, self._heads(v, self.num_heads)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, cache: Any = None, mask: Any = None) -> mx.array:
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return mlx_lm_parts.scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)

    def output(self, out: mx.array, ndim: int = 3) -> mx.array:
        """The attention's `[B, H, T, head_dim]` projected back to the residual stream's shape (`ndim` 3 or 2)."""
        B, H, T, _ = out.shape
        if ndim == 2:
            out = out.reshape(B, -1)
        else:
            out = out.reshape(B, 1, -1) if T == 1 else out.transpose(0, 2, 1, 3).reshape(B, T, -1)
        return self.out_proj(out)

    def __call__(self, x: mx.array, cache: Any = None, mask: Any = None) -> mx.array:
        q, k, v = self.project(x, cache.offset if cache is not None else 0)
        return self.output(self.attend(q, k, v, cache, mask))


class GatedMlp(nn.Module):
    """`linear_in` -> halves a, b -> `silu(a) * b` -> `linear_out`."""

    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dims, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dims, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        a, b = mx.split(self.linear_in(x), 2, axis=-1)
        return self.linear_out(nn.silu(a) * b)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.dim)
        self.norm2 = make_norm(cfg.norm, cfg.dim)
        self.self_attn = Attention(cfg)
        if cfg.gating == "none":
            self.linear1 = nn.Linear(cfg.dim, cfg.dim_feedforward, bias=False)
            self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.dim, bias=False)
        else:
            self.gating = GatedMlp(cfg.dim, cfg.gating_hidden)
        if cfg.layer_scale is not None:
            self.layer_scale_1 = LayerScale(cfg.dim, cfg.layer_scale)
            self.layer_scale_2 = LayerScale(cfg.dim, cfg.layer_scale)
        if cfg.cross_attention:  # Kyutai's cross-attention block always uses a LayerNorm with bias
            self.norm_cross = LayerNorm(cfg.dim, 1e-5, float32=False)
            self.cross_attention = CrossAttention(cfg)
            if cfg.layer_scale is not None:
                self.layer_scale_cross = LayerScale(cfg.dim, cfg.layer_scale)

    def _mlp(self, x: mx.array) -> mx.array:
        if "gating" in self:
            return self.gating(x)
        return self.linear2(nn.gelu(self.linear1(x)))

    # A streaming step is split around the attention (whose key count grows): `attention_inputs`, then the
    # cache and attention, then `finish`; each part has fixed shapes and can be compiled.
    def attention_inputs(self, x: mx.array, offset: int | mx.array) -> tuple[mx.array, mx.array, mx.array]:
        return self.self_attn.project(self.norm1(x), offset)

    def finish(self, x: mx.array, attention: mx.array, cross: Any = None) -> mx.array:
        """The residual stream `x` after this layer, given the attention's output `[B, H, T, head_dim]` (and, in a
        layer with cross-attention, its source or its keys and values: `CrossAttention.source_kv`)."""
        update = self.self_attn.output(attention, x.ndim)
        if "layer_scale_1" in self:
            update = self.layer_scale_1(update)
        x = x + update
        if cross is not None:
            update = self.cross_attention(self.norm_cross(x), cross)
            if "layer_scale_cross" in self:
                update = self.layer_scale_cross(update)
            x = x + update
        update = self._mlp(self.norm2(x))
        if "layer_scale_2" in self:
            update = self.layer_scale_2(update)
        return x + update

    def __call__(self, x: mx.array, cache: Any = None, mask: Any = None, cross: Any = None) -> mx.array:
        q, k, v = self.attention_inputs(x, cache.offset if cache is not None else 0)
        return self.finish(x, self.self_attn.attend(q, k, v, cache, mask), cross)


class Transformer(nn.Module):
    """A stack of layers; positions come from the caches' offsets when streaming."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]

    def add_positions(self, x: mx.array, offset: int | mx.array) -> mx.array:
        """Add the sinusoidal embedding of positions `offset..` when the config has one (`x`: `[B, T, dim]` or
        one step's `[B, dim]`)."""
        if self.cfg.positional_embedding in ("sin", "sin_rope"):
            positions = offset + mx.arange(x.shape[1] if x.ndim == 3 else 1)
            x = x + sin_embedding(positions, x.shape[-1], self.cfg.max_period).astype(x.dtype)
        return x

    def __call__(self, x: mx.array, caches: list[Any] | None = None, cross: Any = None) -> mx.array:
        """`cross`: the cross-attention source `[B, S, dim]`, or each layer's keys and values, when the layers have
        cross-attention."""
        T = x.shape[1] if x.ndim == 3 else 1
        offset = caches[0].offset if caches else 0
        x = self.add_positions(x, offset)
        mask = None
        if T > 1:
            if offset:
                raise ValueError("multi-step input is only supported from the start of a sequence")
            mask = mlx_lm_parts.create_causal_mask(T, 0, window_size=self.cfg.context)
        for i, layer in enumerate(self.layers):
            layer_cross = cross[i] if isinstance(cross, list) else cross
            x = layer(x, caches[i] if caches else None, mask, layer_cross)
        return x
