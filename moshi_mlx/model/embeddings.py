"""Kyutai's embedding variants: low-rank tables and a text stream that carries a second stream (demux)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

ZERO_TOKEN = -1


class ScaledEmbedding(nn.Module):
    """A table with Kyutai's options (its `ScaledEmbedding`, named as Kyutai's MLX port names it).

    `low_rank`: the table holds `low_rank`-wide rows that a linear map takes to `dims`. `demux`: a token is
    `(second + 1) * rows + first`; both halves are looked up in the same table and mapped by `out1` and `out2`
    (a second half of -1 adds nothing). In the demux form the `low_rank` map exists but is not used, as in
    Kyutai's model. The zero token (-1) embeds to exactly zero.
    """

    def __init__(self, rows: int, dims: int, low_rank: int | None = None, demux: bool = False):
        super().__init__()
        width = low_rank or dims
        self.weight = mx.zeros((rows, width))
        if low_rank:
            self.low_rank = nn.Linear(width, dims, bias=False)
        if demux:
            self.out1 = nn.Linear(width, dims, bias=False)
            self.out2 = nn.Linear(width, dims, bias=False)

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def __call__(self, tokens: mx.array) -> mx.array:
        is_zero = (tokens == ZERO_TOKEN)[..., None]
        tokens = mx.maximum(tokens, 0)
        zero = mx.zeros((), self.weight.dtype)
        if "out1" in self:
            first = self.out1(self.weight[tokens % self.rows])
            second = tokens // self.rows - 1
            right = self.out2(self.weight[mx.maximum(second, 0)])
            y = first + mx.where((second < 0)[..., None], zero, right)
            return mx.where(is_zero, zero, y)
        y = mx.where(is_zero, zero, self.weight[tokens])
        if "low_rank" in self:
            y = self.low_rank(y)
        return y


def make_embedding(rows: int, dims: int, low_rank: int | None = None, demux: bool = False) -> nn.Module:
    """A plain `nn.Embedding` when no option is set (the 7B's tables, unchanged), else a `ScaledEmbedding`."""
    if not low_rank and not demux:
        return nn.Embedding(rows, dims)
    return ScaledEmbedding(rows, dims, low_rank, demux)
