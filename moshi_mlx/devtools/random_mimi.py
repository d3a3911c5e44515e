"""Random-weight Mimi checkpoints in Kyutai's tensor names, for tests (numpy and safetensors only).

The layout is Kyutai's released Mimi (SEANet ratios 8, 6, 5, 4; 8-layer transformers of width 512; a split RVQ
of 1 semantic + 31 acoustic codebooks of 2048 x 256), which is what rustymimi requires. PyTorch's default init is
degenerate (zero codebooks, tiny layer scales); here every tensor is random at a scale that keeps activations of
order one, codebooks are drawn at the latent's scale with uneven usage counts, so codes vary with the input and
the decoder makes audible noise. Each tensor has its own generator seeded by (seed, name): the values do not
depend on the order of the tensors. This module imports nothing from moshi_mlx, so Kyutai's PyTorch environment
can load it by path (see tests/fixtures/make_mimi_fixtures.py).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

DIM = 512  # SEANet dimension = transformer width
FILTERS = 64
RATIOS = (8, 6, 5, 4)  # decoder order; the encoder uses them reversed
NUM_LAYERS = 8
FFN = 2048
CODEBOOK_DIM = 256
BINS = 2048
NUM_ACOUSTIC = 31
OUTPUT_CONV = "decoder.model.14."


def mimi_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of Kyutai's Mimi checkpoint, name -> shape (all float32)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_out: int, c_in: int, k: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (c_out, c_in, k)
        if bias:
            shapes[f"{name}.bias"] = (c_out,)

    def resblock(name: str, channels: int) -> None:
        conv(f"{name}.block.1.conv.conv", channels // 2, channels, 3)
        conv(f"{name}.block.3.conv.conv", channels, channels // 2, 1)

    # Encoder: conv, then per ratio (residual block, ELU, strided conv), ELU, conv.
    channels = FILTERS
    conv("encoder.model.0.conv.conv", channels, 1, 7)
    for i, ratio in enumerate(reversed(RATIOS)):
        resblock(f"encoder.model.{1 + 3 * i}", channels)
        conv(f"encoder.model.{3 + 3 * i}.conv.conv", channels * 2, channels, 2 * ratio)
        channels *= 2
    conv("encoder.model.14.conv.conv", DIM, channels, 3)

    # Decoder: conv, then per ratio (ELU, transposed conv [in, out, k], residual block), ELU, conv.
    conv("decoder.model.0.conv.conv", channels, DIM, 7)
    for i, ratio in enumerate(RATIOS):
        shapes[f"decoder.model.{2 + 3 * i}.convtr.convtr.weight"] = (channels, channels // 2, 2 * ratio)
        shapes[f"decoder.model.{2 + 3 * i}.convtr.convtr.bias"] = (channels // 2,)
        channels //= 2
        resblock(f"decoder.model.{3 + 3 * i}", channels)
    conv("decoder.model.14.conv.conv", 1, channels, 3)

    for side in ("encoder", "decoder"):
        for i in range(NUM_LAYERS):
            p = f"{side}_transformer.transformer.layers.{i}"
            shapes[f"{p}.self_attn.in_proj_weight"] = (3 * DIM, DIM)
            shapes[f"{p}.self_attn.out_proj.weight"] = (DIM, DIM)
            shapes[f"{p}.linear1.weight"] = (FFN, DIM)
            shapes[f"{p}.linear2.weight"] = (DIM, FFN)
            for norm in ("norm1", "norm2"):
                shapes[f"{p}.{norm}.weight"] = (DIM,)
                shapes[f"{p}.{norm}.bias"] = (DIM,)
            shapes[f"{p}.layer_scale_1.scale"] = (DIM,)
            shapes[f"{p}.layer_scale_2.scale"] = (DIM,)

    # 25 Hz -> 12.5 Hz: a strided conv down, a depthwise transposed conv up.
    shapes["downsample.conv.conv.conv.weight"] = (DIM, DIM, 4)
    shapes["upsample.convtr.convtr.convtr.weight"] = (DIM, 1, 4)

    for rvq, count in (("rvq_first", 1), ("rvq_rest", NUM_ACOUSTIC)):
        p = f"quantizer.{rvq}"
        shapes[f"{p}.input_proj.weight"] = (CODEBOOK_DIM, DIM, 1)
        shapes[f"{p}.output_proj.weight"] = (DIM, CODEBOOK_DIM, 1)
        for i in range(count):
            shapes[f"{p}.vq.layers.{i}._codebook._initialized"] = (1,)
            shapes[f"{p}.vq.layers.{i}._codebook.cluster_usage"] = (BINS,)
            shapes[f"{p}.vq.layers.{i}._codebook.embedding_sum"] = (BINS, CODEBOOK_DIM)
    return shapes


def _generator(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _codebook_level(name: str) -> int:
    """0 for the semantic codebook, 1.. for the acoustic ones."""
    if ".rvq_first." in name:
        return 0
    return 1 + int(name.split(".vq.layers.")[1].split(".")[0])


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = _generator(seed, name)

    def normal(std: float) -> np.ndarray:
        return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    if name.endswith("_initialized"):
        return np.ones(shape, np.float32)
    if name.endswith("cluster_usage"):
        return rng.uniform(0.5, 4.0, shape).astype(np.float32)
    if name.endswith("embedding_sum"):
        # Codebook entries at the latent's scale, decaying per residual level; stored multiplied by usage.
        usage = _tensor(name.replace("embedding_sum", "cluster_usage"), (shape[0],), seed)
        codebook = normal(0.6 * 0.85 ** _codebook_level(name))
        return codebook * usage[:, None]
    if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
        return rng.uniform(0.05, 0.25, shape).astype(np.float32)
    if ".norm" in name and name.endswith(".weight"):
        return (1.0 + normal(0.1)).astype(np.float32)
    if name.endswith(".bias"):
        return normal(0.02)
    if "convtr" in name and name.endswith(".weight"):
        # Transposed conv [in, out, k] with stride k/2: each output sample sees in * 2 taps.
        fan_in = shape[0] * 2 if shape[1] != 1 else 2
        return normal(1.4 / np.sqrt(fan_in))
    # Convs [out, in, k] and linears [out, in]; ELU keeps about half the variance, hence the gain.
    fan_in = int(np.prod(shape[1:]))
    if name.startswith(OUTPUT_CONV):
        return normal(0.03 / np.sqrt(fan_in))  # decoded audio at speech-like levels (RMS about 0.2)
    return normal(1.4 / np.sqrt(fan_in))


def random_mimi_weights(seed: int = 0, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Deterministic random Mimi tensors (all, or those named), name -> float32 array."""
    shapes = mimi_shapes()
    return {name: _tensor(name, shapes[name], seed) for name in (names or shapes)}


def write_random_mimi(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight Mimi checkpoint (about 385 MB, float32) in Kyutai's names; returns its path."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_mimi_weights(seed), str(path))
    return path
