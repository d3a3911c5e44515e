"""Causal convolutions that stream: the left context is carried between calls, transposed ones overlap-add.

Layout is channels-last `[B, T, C]`. Each module takes its state and returns the new one, so a whole codec step
is a pure function that `mx.compile` can trace once. Both are written as one matrix product over gathered
windows (MLX's CPU convolutions are several times slower than its matmul; on Metal they are on a par).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class Elu(nn.Module):
    """ELU with alpha 1 through `expm1`, as PyTorch computes it."""

    def __call__(self, x: mx.array) -> mx.array:
        return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0)))


class StreamingConv1d(nn.Module):
    """Causal Conv1d: keeps the last `kernel - stride` input samples (dilation included) for the next call.

    The stream starts on zeros (`pad_mode="constant"`) or on copies of its first sample (`"replicate"`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
        groups: int = 1, bias: bool = True, pad_mode: str = "constant",
    ):
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}")
        self.weight = mx.zeros((out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride, self.dilation, self.groups, self.pad_mode = stride, dilation, groups, pad_mode
        self.in_channels = in_channels
        self.context = (kernel_size - 1) * dilation + 1 - stride

    def init_state(self, batch: int, dtype: mx.Dtype) -> dict[str, mx.array]:
        state = {"previous": mx.zeros((batch, self.context, self.in_channels), dtype)}
        if self.pad_mode == "replicate":
            state["first"] = mx.array(True)
        return state

    def __call__(self, x: mx.array, state: dict[str, mx.array]) -> tuple[mx.array, dict[str, mx.array]]:
        previous = state["previous"]
        if self.pad_mode == "replicate":
            previous = mx.where(state["first"], mx.broadcast_to(x[:, :1], previous.shape), previous)
        if self.context:
            x = mx.concatenate([previous, x], axis=1)
        y = self._conv(x)
        if "bias" in self:
            y = y + self.bias
        new = {"previous": x[:, x.shape[1] - self.context :] if self.context else previous}
        if self.pad_mode == "replicate":
            new["first"] = mx.array(False)
        return y, new

    def _conv(self, x: mx.array) -> mx.array:
        if self.groups > 1:
            return mx.conv1d(x, self.weight, stride=self.stride, dilation=self.dilation, groups=self.groups)
        B, L, C = x.shape
        C_out, K, _ = self.weight.shape
        s, d = self.stride, self.dilation
        T = (L - (K - 1) * d - 1) // s + 1
        if K == 1:
            cols = x[:, :: s] if s > 1 else x
        elif d == 1 and K % s == 0 and L == (T - 1 + K // s) * s:
            # Strided by a divisor of the kernel: windows are runs of K // s consecutive blocks of s samples.
            blocks = x.reshape(B, L // s, s * C)
            cols = mx.concatenate([blocks[:, j : j + T] for j in range(K // s)], axis=-1)
        else:
            cols = mx.concatenate([x[:, j * d : j * d + (T - 1) * s + 1 : s] for j in range(K)], axis=-1)
        return cols @ self.weight.reshape(C_out, K * C).T


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d: the last `kernel - stride` outputs (bias left out) wait to be added to the next call's.

    Weight laid out `[kernel, out, in // groups]`: one matrix product gives every tap of every input step.
    Full (groups 1) or depthwise (groups = channels).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        if groups not in (1, in_channels) or (groups > 1 and in_channels != out_channels):
            raise ValueError("only full or depthwise transposed convolutions")
        self.weight = mx.zeros((kernel_size, out_channels, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride, self.groups, self.out_channels = stride, groups, out_channels
        self.overlap = kernel_size - stride

    def init_state(self, batch: int, dtype: mx.Dtype) -> mx.array:
        return mx.zeros((batch, self.overlap, self.out_channels), dtype)

    def __call__(self, x: mx.array, partial: mx.array) -> tuple[mx.array, mx.array]:
        B, T, _ = x.shape
        K, C_out, _ = self.weight.shape
        if self.groups > 1:
            taps = x[:, :, None, :] * self.weight[:, :, 0]
        else:
            taps = (x @ self.weight.reshape(K * C_out, -1).T).reshape(B, T, K, C_out)
        y = _overlap_add(taps, self.stride)
        n = self.overlap
        y = mx.concatenate([y[:, :n] + partial, y[:, n:]], axis=1)
        out, partial = y[:, : y.shape[1] - n], y[:, y.shape[1] - n :]
        if "bias" in self:
            out = out + self.bias
        return out, partial


def _overlap_add(taps: mx.array, stride: int) -> mx.array:
    """`[B, T, K, C]` per-step kernel outputs -> `[B, (T - 1) * stride + K, C]`, step t placed at t * stride."""
    B, T, K, C = taps.shape
    if K % stride:
        raise ValueError("kernel size must be a multiple of the stride")
    blocks = K // stride
    length = (T - 1 + blocks) * stride
    y = mx.zeros((B, length, C), taps.dtype)
    for j in range(blocks):
        part = taps[:, :, j * stride : (j + 1) * stride].reshape(B, T * stride, C)
        y = y + mx.pad(part, [(0, 0), (j * stride, length - T * stride - j * stride), (0, 0)])
    return y
