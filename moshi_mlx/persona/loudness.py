"""Integrated loudness (ITU-R BS.1770-4) and loudness normalisation, as pyloudnorm computes them for mono audio.

PersonaPlex normalises a voice prompt to -24 LUFS with pyloudnorm (`Meter(rate).integrated_loudness`, then
`normalize.loudness`); this reproduces its steps with numpy alone: the K-weighting as two biquads designed from
Bristow-Johnson's cookbook formulas (the high shelf +4 dB at 1500 Hz, Q 1/sqrt(2); the high pass at 38 Hz, Q 0.5),
the filtered signal kept in the input's precision, 400 ms blocks every 100 ms (their count and bounds rounded
as pyloudnorm rounds them), the absolute gate at -70 LUFS and the relative gate 10 LU under the gated mean.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_S = 0.4
OVERLAP = 0.75
ABSOLUTE_GATE = -70.0
RELATIVE_GATE = -10.0
FILTER_BLOCK = 1024  # samples filtered at once: one matrix product per block, the state carried between blocks


def _biquad_coefficients(kind: str, gain_db: float, q: float, fc: float, rate: float) -> tuple[np.ndarray, ...]:
    """(b, a) normalised by a0, as pyloudnorm's IIRfilter designs them."""
    a_gain = 10 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * (fc / rate)
    alpha = np.sin(w0) / (2.0 * q)
    cos, root = np.cos(w0), 2 * np.sqrt(a_gain) * alpha
    if kind == "high_shelf":
        b = [a_gain * ((a_gain + 1) + (a_gain - 1) * cos + root), -2 * a_gain * ((a_gain - 1) + (a_gain + 1) * cos),
             a_gain * ((a_gain + 1) + (a_gain - 1) * cos - root)]
        a = [(a_gain + 1) - (a_gain - 1) * cos + root, 2 * ((a_gain - 1) - (a_gain + 1) * cos),
             (a_gain + 1) - (a_gain - 1) * cos - root]
    else:  # high pass
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


def k_weighting(rate: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two stages of BS.1770's K-weighting at `rate`, in the order they apply."""
    return [_biquad_coefficients("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0, rate),
            _biquad_coefficients("high_pass", 0.0, 0.5, 38.0, rate)]


def biquad(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`scipy.signal.lfilter(b, a, x)` for one biquad from rest, in float64.

    The numerator is an exact convolution; the recursive part runs a block at a time: inside a block its response
    to the block's input is one product with the impulse response's Toeplitz matrix, and the two outputs before
    the block add their free response.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    w = np.convolve(x, b)[: len(x)]
    a1, a2 = float(a[1]), float(a[2])
    n = FILTER_BLOCK
    # impulse[k]: the recursion's response to a unit input at 0; free[:, j]: to y[-1-j] = 1 with no input.
    impulse, free = np.zeros(n + 2), np.zeros((n + 2, 2))
    impulse[2], free[1, 0], free[0, 1] = 1.0, 1.0, 1.0
    for k in range(2, n + 2):
        if k > 2:
            impulse[k] = -a1 * impulse[k - 1] - a2 * impulse[k - 2]
        free[k] = -a1 * free[k - 1] - a2 * free[k - 2]
    impulse, free = impulse[2:], free[2:]
    toeplitz = np.tril(impulse[np.subtract.outer(np.arange(n), np.arange(n)).clip(0)])
    blocks = -(-len(x) // n)
    padded = np.zeros(blocks * n)
    padded[: len(x)] = w
    forced = padded.reshape(blocks, n) @ toeplitz.T
    y = np.empty_like(forced)
    before = np.zeros(2)  # y[-1], y[-2]
    for i in range(blocks):
        y[i] = forced[i] + free @ before
        before = y[i, -1], y[i, -2]
    return y.reshape(-1)[: len(x)]


def integrated_loudness(audio: np.ndarray, rate: float) -> float:
    """Gated loudness of mono `audio` in LUFS (-inf when every block is silent); ValueError when the audio is not
    longer than one 400 ms block."""
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError("expected mono floating-point audio")
    if audio.shape[0] < BLOCK_S * rate:
        raise ValueError(f"audio shorter than one {BLOCK_S * 1000:.0f} ms block")
    filtered = audio.copy()
    for b, a in k_weighting(rate):
        filtered[:] = biquad(b, a, filtered)  # stored in the input's precision, as pyloudnorm does
    step = 1.0 - OVERLAP
    count = int(np.round((audio.shape[0] / rate - BLOCK_S) / (BLOCK_S * step))) + 1
    # Each block's mean square in the filtered signal's precision, scaled as pyloudnorm scales it under NumPy 2
    # (a Python float times a float32 sum stays float32), then gated in float64.
    scale = filtered.dtype.type(1.0 / (BLOCK_S * rate))
    power = np.array([
        scale * np.sum(np.square(filtered[int(BLOCK_S * (j * step) * rate) : int(BLOCK_S * (j * step + 1) * rate)]))
        for j in range(count)
    ], dtype=np.float64)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(power)
    above = power[block_lufs >= ABSOLUTE_GATE]
    if above.size == 0:
        return -math.inf
    relative = -0.691 + 10.0 * math.log10(float(np.mean(above))) + RELATIVE_GATE
    gated = power[(block_lufs > relative) & (block_lufs > ABSOLUTE_GATE)]
    if gated.size == 0:
        return -math.inf
    return -0.691 + 10.0 * math.log10(float(np.mean(gated)))


def normalize_loudness(audio: np.ndarray, rate: float, target_lufs: float) -> np.ndarray:
    """`audio` scaled to `target_lufs` (float32; peaks may pass 1.0, as with pyloudnorm); ValueError when it is
    silent or too short to measure."""
    loudness = integrated_loudness(audio, rate)
    if not math.isfinite(loudness):
        raise ValueError("the audio is silent")
    gain = np.power(10.0, (target_lufs - loudness) / 20.0)
    return (gain * np.asarray(audio, dtype=np.float64)).astype(np.float32)
