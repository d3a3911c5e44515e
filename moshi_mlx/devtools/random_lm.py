"""Small random-weight checkpoints in Kyutai's formats, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from ..model.config import LmConfig
from ..model.lm import Lm
from ..model.weights import sanitize, save_lm, save_lm_pytorch, to_pytorch_names, write_config


def tiny_config(**overrides: Any) -> LmConfig:
    """The 7B's structure (16 streams, 8 depth steps, the same delays) with tiny dimensions."""
    values: dict[str, Any] = dict(
        dim=32, text_card=64, n_q=16, dep_q=8, card=64, num_heads=2, num_layers=2, hidden_scale=4.125,
        context=40, depformer_dim=16, depformer_dim_feedforward=40, depformer_num_heads=2,
        depformer_num_layers=2, depformer_context=8,
    )
    values.update(overrides)
    return LmConfig(**values)


def tiny_persona_config(**overrides: Any) -> LmConfig:
    """PersonaPlex's structure (16 depth steps, Mimi's 2048 codes for its silence and sine codes), tiny."""
    values: dict[str, Any] = dict(card=2048, dep_q=16, model_type="personaplex", context=100)
    return tiny_config(**{**values, **overrides})


def random_lm(config: LmConfig | None = None, seed: int = 0, scale: float = 1.0) -> Lm:
    """An `Lm` with deterministic random weights (float32); `scale` sharpens the logits."""
    config = config or tiny_config()
    mx.random.seed(seed)
    lm = Lm(config)
    params = dict(tree_flatten(lm.parameters()))
    keys = mx.random.split(mx.random.key(seed), len(params))
    fresh = {}
    for key, (name, value) in zip(keys, sorted(params.items()), strict=True):
        if name.endswith(("norm1.weight", "norm2.weight", "out_norm.weight")):
            fresh[name] = 1.0 + 0.1 * mx.random.normal(value.shape, key=key)
        elif name.endswith("bias"):
            fresh[name] = 0.1 * mx.random.normal(value.shape, key=key)
        else:
            fresh[name] = scale * mx.random.normal(value.shape, key=key) / (value.shape[-1] ** 0.5)
    # Tie what Kyutai's PyTorch model shares between depth steps (norms, scheduled weight sets).
    fresh = sanitize(to_pytorch_names(fresh, config), config)
    lm.load_weights(list(fresh.items()), strict=True)
    lm.update(tree_map(lambda p: p.astype(mx.float32), lm.parameters()))
    mx.eval(lm.parameters())
    return lm


def write_random_lm(
    directory: str | Path,
    config: LmConfig | None = None,
    seed: int = 0,
    layout: str = "mlx",
    scale: float = 1.0,
    dtype: mx.Dtype | None = None,
) -> tuple[Path, Path]:
    """Write `model.safetensors` (layout "mlx", "pytorch" or "pytorch-fused"; float32 unless `dtype`, e.g.
    bfloat16 as Kyutai publishes) and `config.json`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lm = random_lm(config, seed, scale)
    if dtype is not None:
        lm.update(tree_map(lambda p: p.astype(dtype), lm.parameters()))
    weights_path, config_path = directory / "model.safetensors", directory / "config.json"
    if layout == "mlx":
        save_lm(lm, weights_path)
    elif layout in ("pytorch", "pytorch-fused"):
        save_lm_pytorch(lm, weights_path, fused=layout == "pytorch-fused")
    else:
        raise ValueError(f"unknown layout {layout!r}")
    write_config(lm.config, config_path)
    return weights_path, config_path
