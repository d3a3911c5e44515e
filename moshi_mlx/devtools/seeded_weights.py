"""Random LM weights that depend only on (seed, tensor name, shape): both Kyutai's PyTorch environment and ours make
the same tensors, so a reference fixture needs no committed weights (tests/fixtures/make_stt_fixtures.py).

Numpy only and nothing from moshi_mlx: Kyutai's PyTorch environment loads this file by path.
"""

from __future__ import annotations

import zlib

import numpy as np

HEADS = ("text_linear.", "linears.", "extra_heads.")  # output layers: scaled to spread their logits


def seeded_tensor(name: str, shape: tuple[int, ...], seed: int, head_scale: float = 1.0) -> np.ndarray:
    """Gaussian `1 / sqrt(fan_in)` (output heads `head_scale` times that); norm gains (`.alpha`) `1 + 0.1 N(0, 1)`."""
    noise = np.random.default_rng([seed, zlib.crc32(name.encode())]).standard_normal(shape)
    if name.endswith(".alpha"):
        return (1.0 + 0.1 * noise).astype(np.float32)
    scale = head_scale if name.startswith(HEADS) else 1.0
    return (scale * noise / np.sqrt(shape[-1])).astype(np.float32)


def seeded_weights(shapes: dict[str, tuple[int, ...]], seed: int, head_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Every tensor of `shapes` (Kyutai's PyTorch names), float32."""
    return {name: seeded_tensor(name, tuple(shape), seed, head_scale) for name, shape in shapes.items()}


def fingerprint(weights: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Float64 sums of some tensors: a changed generator shows as a changed fingerprint."""
    return np.array([weights[name].astype(np.float64).sum() for name in names])
