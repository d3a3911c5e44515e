"""SEANet, Mimi's convolutional encoder (24 kHz audio -> 25 Hz latents) and decoder, streaming.

Layers are numbered as in Kyutai's `nn.Sequential` (activations included), so checkpoint names map one to one.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .conv import Elu, StreamingConv1d, StreamingConvTranspose1d
from .mimi_config import MimiConfig


class ResBlock(nn.Module):
    """x + conv1(elu(conv_k(elu(x)))), the inner width halved."""

    def __init__(self, dim: int, kernel_size: int, compress: int):
        super().__init__()
        hidden = dim // compress
        self.block = [Elu(), StreamingConv1d(dim, hidden, kernel_size), Elu(), StreamingConv1d(hidden, dim, 1)]

    def init_state(self, batch: int, dtype: mx.Dtype) -> list[Any]:
        return [self.block[1].init_state(batch, dtype), self.block[3].init_state(batch, dtype)]

    def __call__(self, x: mx.array, state: list[Any]) -> tuple[mx.array, list[Any]]:
        y, s1 = self.block[1](self.block[0](x), state[0])
        y, s3 = self.block[3](self.block[2](y), state[1])
        return x + y, [s1, s3]


class _Stack(nn.Module):
    """A sequence of layers where the convolutions and residual blocks carry state."""

    model: list[nn.Module]

    def init_state(self, batch: int, dtype: mx.Dtype) -> list[Any]:
        return [layer.init_state(batch, dtype) for layer in self.model if not isinstance(layer, Elu)]

    def __call__(self, x: mx.array, state: list[Any]) -> tuple[mx.array, list[Any]]:
        states = iter(state)
        new = []
        for layer in self.model:
            if isinstance(layer, Elu):
                x = layer(x)
            else:
                x, s = layer(x, next(states))
                new.append(s)
        return x, new


class SeanetEncoder(_Stack):
    """conv -> per ratio (residual block, ELU, strided conv doubling the channels) -> ELU -> conv to `dimension`."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        channels = cfg.n_filters
        layers: list[nn.Module] = [StreamingConv1d(cfg.channels, channels, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            layers += [
                ResBlock(channels, cfg.residual_kernel_size, cfg.compress),
                Elu(),
                StreamingConv1d(channels, 2 * channels, 2 * ratio, stride=ratio),
            ]
            channels *= 2
        layers += [Elu(), StreamingConv1d(channels, cfg.dimension, cfg.last_kernel_size)]
        self.model = layers


class SeanetDecoder(_Stack):
    """conv from `dimension` -> per ratio (ELU, transposed conv halving the channels, residual block) -> ELU -> conv."""

    def __init__(self, cfg: MimiConfig):
        super().__init__()
        channels = cfg.n_filters * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [StreamingConv1d(cfg.dimension, channels, cfg.kernel_size)]
        for ratio in cfg.ratios:
            layers += [
                Elu(),
                StreamingConvTranspose1d(channels, channels // 2, 2 * ratio, stride=ratio),
                ResBlock(channels // 2, cfg.residual_kernel_size, cfg.compress),
            ]
            channels //= 2
        layers += [Elu(), StreamingConv1d(channels, cfg.channels, cfg.last_kernel_size)]
        self.model = layers
