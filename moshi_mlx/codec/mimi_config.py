"""Mimi's hyperparameters: Kyutai's released codec (SEANet 8-6-5-4, 8-layer transformers, split RVQ)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..model.schema import BaseConfig


@dataclass(frozen=True)
class MimiConfig(BaseConfig):
    sample_rate: int = 24000
    frame_rate: float = 12.5
    channels: int = 1
    dimension: int = 512  # SEANet latent = transformer width
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder order; the encoder runs them reversed
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    compress: int = 2
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250  # attention span in encoder steps (25 Hz): 10 s
    max_period: float = 10000.0
    codebook_dim: int = 256
    bins: int = 2048
    n_q_semantic: int = 1
    num_codebooks: int = 8  # codebooks used, of the checkpoint's 32

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MimiConfig:
        return cls(**{k: (tuple(v) if k == "ratios" else v) for k, v in cls.known(values).items()})

    @property
    def hop_length(self) -> int:
        """Samples per encoder step (25 Hz)."""
        return math.prod(self.ratios)

    @property
    def frame_size(self) -> int:
        return int(self.sample_rate / self.frame_rate)

    @property
    def resample_stride(self) -> int:
        """Encoder steps per frame: the 25 Hz -> 12.5 Hz conversion."""
        return self.frame_size // self.hop_length

    @property
    def head_dim(self) -> int:
        return self.dimension // self.num_heads
