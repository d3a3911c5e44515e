"""Kyutai's conditioners (`lut`, `tensor`) and condition fuser (`sum`, `cross`), as its LM config declares them.

A conditioner turns an attribute (a string such as the CFG coefficient "2.0", or a tensor such as a speaker
embedding) into vectors of the model's width; a missing attribute (None, or a tensor's masked-out rows) becomes
the conditioner's learnt padding. The fuser adds the `sum` conditions to every step's input embedding and
concatenates the `cross` ones into the cross-attention source, with a sinusoidal position embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .transformer import sin_embedding


def _masked(cond: mx.array, mask: mx.array, padding: mx.array) -> mx.array:
    """`cond` where `mask`, the learnt padding elsewhere (Kyutai's `cond * m + padding * (1 - m)`)."""
    m = mask.astype(cond.dtype)[..., None]
    return cond * m + padding.astype(cond.dtype) * (1 - m)


class LutConditioner(nn.Module):
    """A lookup table over a fixed set of strings (Kyutai's `noop` tokenizer); None is the padding bin."""

    def __init__(self, output_dim: int, n_bins: int, dim: int, possible_values: list[str] | None = None):
        super().__init__()
        self.embed = nn.Embedding(n_bins + 1, dim)
        self.output_proj = nn.Linear(dim, output_dim, bias=False)
        self.learnt_padding = mx.zeros((1, 1, output_dim))
        self.n_bins = n_bins
        # Value -> bin, kept out of the module's tree (MLX keeps lists and dicts there).
        bins = None if possible_values is None else {v: i for i, v in enumerate(possible_values)}
        self._bins = None if bins is None else MappingProxyType(bins)

    @property
    def possible_values(self) -> list[str] | None:
        return None if self._bins is None else list(self._bins)

    def index(self, value: str | None) -> int:
        if value is None:
            return self.n_bins
        if self._bins is None:  # Kyutai's hash trick
            return int(hashlib.sha256(value.encode("utf-8")).hexdigest(), 16) % self.n_bins
        if value not in self._bins:
            raise ValueError(f"{value!r} is not one of {', '.join(self._bins)}")
        return self._bins[value]

    def __call__(self, values: list[str | None]) -> mx.array:
        """`[B, 1, output_dim]` for one value per batch item."""
        tokens = mx.array([[self.index(v)] for v in values])
        mask = mx.array([[v is not None] for v in values])
        return _masked(self.output_proj(self.embed(tokens)), mask, self.learnt_padding)


class TensorConditioner(nn.Module):
    """A tensor `[B, T, dim]` with a mask `[B, T]`, projected to the model's width."""

    def __init__(self, output_dim: int, dim: int):
        super().__init__()
        self.output_proj = nn.Linear(dim, output_dim, bias=False)
        self.learnt_padding = mx.zeros((1, 1, output_dim))
        self.dim = dim

    def __call__(self, tensor: mx.array, mask: mx.array) -> mx.array:
        return _masked(self.output_proj(tensor.astype(self.learnt_padding.dtype)), mask, self.learnt_padding)


@dataclass(frozen=True)
class Fusion:
    """The fuser block: conditions summed into the input, conditions concatenated as the cross-attention source
    (with a sinusoidal position embedding times `pos_scale` when `pos_emb`). Not a list or dict: MLX keeps those in
    the module's tree."""

    sum: tuple[str, ...]
    cross: tuple[str, ...]
    pos_emb: bool
    pos_scale: float


class ConditionProvider(nn.Module):
    """The conditioners of a config (`conditioners`, `fuser` blocks of Kyutai's JSON) and their fusion."""

    def __init__(self, output_dim: int, conditioners: Mapping[str, Any], fuser: Mapping[str, Any] | None):
        super().__init__()
        self.conditioners = {name: _make(output_dim, spec) for name, spec in conditioners.items()}
        fuser = fuser or {}
        self.fusion = Fusion(tuple(fuser.get("sum", [])), tuple(fuser.get("cross", [])),
                             bool(fuser.get("cross_attention_pos_emb", False)),
                             float(fuser.get("cross_attention_pos_emb_scale", 1.0)))

    def lut_values(self, name: str) -> list[str] | None:
        """The strings a `lut` conditioner accepts (None: any string, hashed)."""
        return self.conditioners[name].possible_values

    def tensor_dim(self, name: str) -> int:
        return self.conditioners[name].dim

    @property
    def text_names(self) -> list[str]:
        return [n for n, c in self.conditioners.items() if isinstance(c, LutConditioner)]

    @property
    def tensor_names(self) -> list[str]:
        return [n for n, c in self.conditioners.items() if isinstance(c, TensorConditioner)]

    def conditions(self, text: list[dict[str, str | None]],
                   tensors: list[dict[str, tuple[mx.array, mx.array]]]) -> dict[str, mx.array]:
        """Each conditioner's output `[B, T, output_dim]` for a batch of attributes (one dict per item).

        `tensors` items map a name to `(tensor [1, T, dim], mask [1, T])`; items of different lengths are padded
        with masked rows, as Kyutai's `TensorCondition.cat` does.
        """
        out = {}
        for name in self.text_names:
            out[name] = self.conditioners[name]([item.get(name) for item in text])
        for name in self.tensor_names:
            parts = [item[name] for item in tensors]
            length = max(t.shape[1] for t, _ in parts)
            padded = [mx.pad(t[0], [(0, length - t.shape[1]), (0, 0)]) for t, _ in parts]
            masks = [mx.pad(m[0].astype(mx.bool_), [(0, length - m.shape[1])]) for _, m in parts]
            out[name] = self.conditioners[name](mx.stack(padded), mx.stack(masks))
        return out

    def sum_condition(self, conditions: Mapping[str, mx.array]) -> mx.array | None:
        """The vector added to every step's input `[B, 1, dim]`, or None."""
        total = None
        for name in self.fusion.sum:
            total = conditions[name] if total is None else total + conditions[name]
        return total

    def cross_source(self, conditions: Mapping[str, mx.array]) -> mx.array | None:
        """The cross-attention source `[B, T, dim]`, or None."""
        if not self.fusion.cross:
            return None
        src = mx.concatenate([conditions[name] for name in self.fusion.cross], axis=1)
        if self.fusion.pos_emb:
            emb = sin_embedding(mx.arange(src.shape[1]), src.shape[-1], 10000.0)
            src = src + self.fusion.pos_scale * emb.astype(src.dtype)
        return src


def _make(output_dim: int, spec: Mapping[str, Any]) -> nn.Module:
    kind = spec["type"]
    args = spec[kind]
    if kind == "lut":
        return LutConditioner(output_dim, args["n_bins"], args["dim"], args.get("possible_values"))
    return TensorConditioner(output_dim, args["dim"])
