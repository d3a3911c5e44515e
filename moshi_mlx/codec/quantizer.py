"""Mimi's split residual vector quantizer: one semantic codebook, and acoustic ones quantizing in turn."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .mimi_config import MimiConfig

USAGE_EPS = 1e-5  # Kyutai's floor on cluster usage when forming the codebook


class Codebook(nn.Module):
    def __init__(self, bins: int, dim: int):
        super().__init__()
        self.embedding = mx.zeros((bins, dim))

    def encode(self, x: mx.array) -> mx.array:
        """Index of the nearest entry (Euclidean) for each row of `[N, dim]`."""
        e = self.embedding.astype(mx.float32)
        distances = mx.sum(e * e, axis=-1) - 2 * (x.astype(mx.float32) @ e.T)  # |x|^2 is the same for all
        return mx.argmin(distances, axis=-1)

    def decode(self, codes: mx.array) -> mx.array:
        return self.embedding[codes]


class ResidualQuantizer(nn.Module):
    """Project to the codebook width, quantize the residual level by level, project back."""

    def __init__(self, cfg: MimiConfig, num_levels: int):
        super().__init__()
        self.input_proj = nn.Linear(cfg.dimension, cfg.codebook_dim, bias=False)
        self.output_proj = nn.Linear(cfg.codebook_dim, cfg.dimension, bias=False)
        self.layers = [Codebook(cfg.bins, cfg.codebook_dim) for _ in range(num_levels)]

    def encode(self, x: mx.array) -> mx.array:
        """`[N, dimension]` -> codes `[N, levels]`."""
        residual = self.input_proj(x)
        codes = []
        for layer in self.layers:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return mx.stack(codes, axis=-1)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[N, levels]` -> `[N, dimension]`."""
        total = self.layers[0].decode(codes[:, 0])
        for i, layer in enumerate(self.layers[1:], start=1):
            total = total + layer.decode(codes[:, i])
        return self.output_proj(total)


class SplitQuantizer(nn.Module):
    """`rvq_first` (semantic) and `rvq_rest` (acoustic) both quantize the same latent; their outputs add up."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.n_q_semantic = cfg.n_q_semantic
        self.rvq_first = ResidualQuantizer(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualQuantizer(cfg, cfg.num_codebooks - cfg.n_q_semantic)

    def encode(self, x: mx.array) -> mx.array:
        return mx.concatenate([self.rvq_first.encode(x), self.rvq_rest.encode(x)], axis=-1)

    def decode(self, codes: mx.array) -> mx.array:
        k = self.n_q_semantic
        return self.rvq_first.decode(codes[:, :k]) + self.rvq_rest.decode(codes[:, k:])
