"""Checkpoints: reading either of Kyutai's layouts, quantization detection, strict loading, saving."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import MoshiError
from .config import LmConfig
from .lm import Lm
from .persona_layout import expand_depth_steps
from .pytorch_names import is_pytorch_layout, sanitize, to_pytorch_names


def read_safetensors(path: str | Path) -> dict[str, mx.array]:
    path = Path(path)
    if not path.is_file():
        raise MoshiError(f"weights file not found: {path}")
    try:
        return mx.load(str(path))
    except Exception as e:  # mlx raises bare RuntimeError/ValueError for unreadable files
        raise MoshiError(f"cannot read weights {path} as safetensors: {e}") from None


def _quantization_of(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, dict[str, int]]:
    """Bits and group size of every quantized module, read off the packed shapes."""
    found: dict[str, dict[str, int]] = {}
    for path, module in model.named_modules():
        if f"{path}.scales" not in weights or not hasattr(module, "to_quantized"):
            continue
        in_dims = module.weight.shape[-1]
        packed = weights[f"{path}.weight"].shape[-1]
        groups = weights[f"{path}.scales"].shape[-1]
        bits, group_size = packed * 32 // in_dims, in_dims // max(groups, 1)
        if packed * 32 != bits * in_dims or group_size * groups != in_dims or bits not in (2, 3, 4, 5, 6, 8):
            raise MoshiError(f"tensor {path}.weight has a quantized shape that does not fit the model config")
        found[path] = {"group_size": group_size, "bits": bits}
    return found


def summarize_quantization(per_module: Mapping[str, Mapping[str, int]]) -> str:
    """'bf16', 'q4', 'q8' or 'mixed'."""
    bits = {q["bits"] for q in per_module.values()}
    if not bits:
        return "bf16"
    return f"q{bits.pop()}" if len(bits) == 1 else "mixed"


def _check_names(model: nn.Module, weights: dict[str, mx.array], path: Path) -> None:
    expected = dict(tree_flatten(model.parameters()))
    for name in expected:
        if name not in weights:
            raise MoshiError(f"{path.name} does not fit the model config: missing tensor '{name}' "
                             "(wrong --config, or not a Moshi checkpoint)")
    for name in weights:
        if name not in expected:
            raise MoshiError(f"{path.name} does not fit the model config: unexpected tensor '{name}' "
                             "(wrong --config, or not a Moshi checkpoint)")
    for name, value in expected.items():
        if tuple(weights[name].shape) != tuple(value.shape):
            raise MoshiError(
                f"{path.name} does not fit the model config: tensor '{name}' has shape "
                f"{tuple(weights[name].shape)}, expected {tuple(value.shape)} "
                "(wrong --config or quantization?)"
            )


def load_lm(
    weights_path: str | Path,
    config: LmConfig | str | Path | dict | None = None,
    dtype: mx.Dtype = mx.bfloat16,
) -> Lm:
    """Load Moshi's LM from Kyutai's PyTorch or MLX checkpoint, bf16 or quantized (read off the file).

    `config` is an `LmConfig`, a path to Kyutai's config.json, a dict, or None for the 7B preset.
    """
    cfg = as_config(config)
    path = Path(weights_path)
    weights = read_safetensors(path)
    if is_pytorch_layout(weights):
        weights = sanitize(expand_depth_steps(weights, cfg), cfg)
    model = Lm(cfg)
    quantization = _quantization_of(model, weights)
    if quantization:
        nn.quantize(model, class_predicate=lambda p, m: quantization.get(p, False))
    _check_names(model, weights, path)
    _check_dtypes(weights, quantization, path)
    # A tensor shared by several depth steps (a weights-per-step schedule) stays one tensor: cast once.
    cast: dict[int, mx.array] = {}
    weights = {
        n: cast.setdefault(id(v), v.astype(dtype)) if mx.issubdtype(v.dtype, mx.floating) else v
        for n, v in weights.items()
    }
    model.load_weights(list(weights.items()), strict=True)
    model.quantization = MappingProxyType(quantization)
    model.eval()
    floats = [n for n, v in weights.items() if mx.issubdtype(v.dtype, mx.floating)]
    # One isfinite reduction per tensor, evaluated with the load itself: a damaged file fails here, not as a
    # silent blank transcript later.
    finite = mx.stack([mx.isfinite(weights[n]).all() for n in floats]) if floats else mx.array([True])
    mx.eval(model.parameters(), finite)
    if not finite.all().item():
        bad = floats[int(mx.argmin(finite.astype(mx.int32)).item())]
        raise MoshiError(f"{path.name} is damaged: tensor '{bad}' holds NaN or infinite values "
                         "(download or convert the weights again)")
    return model


def _check_dtypes(weights: dict[str, mx.array], quantization: Mapping[str, object], path: Path) -> None:
    """Packed quantized weights are uint32; everything else must be floating point (an integer tensor where
    floats belong would load, then fail or sample garbage at the first step)."""
    for name, value in weights.items():
        packed = name.endswith(".weight") and name[: -len(".weight")] in quantization
        if packed and value.dtype != mx.uint32:
            raise MoshiError(f"{path.name}: quantized tensor '{name}' is {_dtype(value)}, expected uint32 "
                             "(not a Moshi checkpoint)")
        if not packed and not mx.issubdtype(value.dtype, mx.floating):
            raise MoshiError(f"{path.name}: tensor '{name}' is {_dtype(value)}, expected floating point "
                             "(bf16, f16 or f32): not a Moshi checkpoint")


def _dtype(value: mx.array) -> str:
    return str(value.dtype).removeprefix("mlx.core.")


def as_config(config: LmConfig | str | Path | dict | None) -> LmConfig:
    """An `LmConfig` from one, a path to Kyutai's config.json, a dict, or None (the 7B preset)."""
    if config is None:
        return LmConfig.moshi_7b()
    if isinstance(config, LmConfig):
        return config
    if isinstance(config, dict):
        return LmConfig.from_dict(config)
    return LmConfig.from_json(config)


def save_lm(lm: Lm, path: str | Path) -> None:
    """Write the weights in Kyutai's MLX layout (quantized modules as weight/scales/biases)."""
    mx.save_safetensors(str(path), dict(tree_flatten(lm.parameters())), metadata={"format": "mlx"})


def save_lm_pytorch(lm: Lm, path: str | Path, fused: bool = False) -> None:
    """Write unquantized weights under Kyutai's PyTorch names."""
    weights = to_pytorch_names(dict(tree_flatten(lm.parameters())), lm.config, fused=fused)
    mx.save_safetensors(str(path), weights, metadata={"format": "pt"})


def write_config(config: LmConfig, path: str | Path, **extra: Any) -> None:
    """Write Kyutai's JSON schema (plus any extra keys, e.g. a quantization block)."""
    with open(path, "w") as f:
        json.dump({**config.to_dict(), **extra}, f, indent=2)
